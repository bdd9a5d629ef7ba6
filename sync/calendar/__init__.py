"""The calendar kind's pure core: recurrence, time zones, matching and rules for events."""
