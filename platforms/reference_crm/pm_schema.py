"""Tables of the reference platform's project-management (PM) calendar.

They live on the CRM's own MetaData (schema.metadata), so `ReferenceCrm` creates them
with the other tables through the same `create_all`, and every write takes the same
per-organisation lock and draws from the same `crm_change_log` sequence (see
schema.py for why that keeps a feed gap-free).

Two flavours, one table
-----------------------
An organisation's calendar is "native" (the platform stores a recurring series and
its exceptions as they are) or "singles" (the platform knows single events only).
`pm_events.kind` says what a row is:

- ``event``: a single event, or (native only) a series master or an exception;
- ``series`` (singles only): the series the platform expands, never shown itself;
- ``instance`` (singles only): one expanded occurrence, tied to its series by
  `series_id`. `edited` marks an instance a person or the sync changed (moved,
  retitled, cancelled, or a "this and following" split): that row *is* an
  exception of the series. An unedited instance is derived from its series and is
  rewritten, added or removed whenever the series changes or the horizon rolls.

Why unedited instances keep change_seq 0
----------------------------------------
The change feed reports canonical records (masters, exceptions, singles). An
unedited instance is not one: its content follows from the series. So deriving,
moving or adding such rows draws no sequence number and leaves `change_seq` at 0,
below every cursor, and rolling the horizon forward adds no feed entries for content
already synced. An exception row draws a number on every change like any record.

The meeting key
---------------
`(org_id, uid, recurrence_id)` is unique among live rows (a partial unique index:
a deleted row's key may be used again by a new row). It is how one meeting found on
several users' calendars stays one platform record: a second create of the same key
returns the row already holding it (see pm_service.CrmCalendar.put_event).
"""

from __future__ import annotations

import sqlalchemy as sa

from platforms.reference_crm.schema import metadata

#: per-organisation calendar settings; an organisation without a row is "native"
calendar_orgs = sa.Table(
    "pm_calendar_orgs",
    metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("flavour", sa.String(16), nullable=False),
    sa.Column("horizon_days", sa.Integer, nullable=False),
    # Instances are expanded over [horizon_from, horizon_until) (epoch seconds, UTC).
    sa.Column("horizon_from", sa.Float, nullable=False),
    sa.Column("horizon_until", sa.Float, nullable=False),
)

projects = sa.Table(
    "pm_projects",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_pm_projects_org", "org_id"),
)

events = sa.Table(
    "pm_events",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("series_id", sa.String(64), nullable=True),
    sa.Column("edited", sa.Boolean, nullable=False, default=False),
    sa.Column("owner_id", sa.String(128), nullable=True),
    sa.Column("project_id", sa.String(64), nullable=False, default=""),
    sa.Column("uid", sa.String(512), nullable=False),
    sa.Column("recurrence_id", sa.String(32), nullable=False, default=""),
    # The start as sortable text (the platform's calendar view orders by it).
    sa.Column("starts", sa.String(32), nullable=False, default=""),
    # The event's fields (models.event.Event as JSON): title, times, attendees, rrule ...
    sa.Column("event", sa.JSON, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("change_seq", sa.BigInteger, nullable=False),
    sa.Index("ix_pm_events_feed", "org_id", "change_seq"),
    sa.Index("ix_pm_events_series", "series_id"),
)

sa.Index(
    "ux_pm_events_meeting_key",
    events.c.org_id, events.c.uid, events.c.recurrence_id,
    unique=True,
    postgresql_where=events.c.deleted == sa.false(),
    sqlite_where=events.c.deleted == sa.false(),
)

rules = sa.Table(
    "pm_rules",
    metadata,
    sa.Column("org_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
)
