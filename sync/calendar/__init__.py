"""The calendar kind's pure core: recurrence, time zones, matching and rules for events.

- `recurrence`: a series' instances in a window (exceptions and THISANDFUTURE applied),
  "this and following" splits, a series moved to another zone;
- `matching`: duplicate search for events without a shared UID;
- `problems`: what makes an event unusable, in value-free messages;
- `fixes`: named rules answering a platform's refusal of an event.

`sync.kinds.calendar.CALENDAR` wires them into the generic planner.
"""
