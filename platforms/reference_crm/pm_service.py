"""The reference platform's project-management calendar: projects and events, per organisation.

Reach it as `crm.calendar`. Writes run under the organisation's lock and draw from
the CRM's change sequence (schema.py), so the calendar feed is gap-free like the
contacts feed. Versions give optimistic concurrency, idempotency keys make retried
writes harmless, and per-organisation rules (pm_rules.py) refuse items one by one.

Each organisation picks a flavour (pm_schema.py explains the rows):

- "native": a series and its exceptions are stored as they are, one row each.
- "singles": the platform has single events only. A series is a hidden row expanded
  into instance rows over a horizon (default 90 days from when the flavour was set,
  rolled forward by `extend_horizon`). An edit of the series rewrites, moves, adds
  or removes its unedited instances; an instance edited on the platform (moved,
  retitled, cancelled) becomes an exception of its series; a "this and following"
  exception re-derives every later unedited instance (pm_expand.py).

Whatever the flavour, `PmEvent.to_side_record` and the feed speak the canonical
shape of models/event.py: a series is one master record, each exception a record
keyed by (uid, recurrence_id), a single event a record. Unedited instance rows are
not records: they never enter the feed and read as tombstones by id.

The meeting key: `(org, uid, recurrence_id)` is unique among live rows. Creating an
event whose key a live row already holds returns that row unchanged (the same meeting
seen on a second user's calendar is claimed, not duplicated); in "singles" an
unedited instance holding the key becomes the exception instead. Under the org lock
the look-up and the insert cannot interleave; the partial unique index backs it up.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from models.errors import ConnectorError, Fatal, NotFound, ValidationRejected
from models.event import Event, EventRecord
from platforms.reference_crm import pm_rules
from platforms.reference_crm import pm_schema as pm
from platforms.reference_crm import schema as t
from platforms.reference_crm.pm_expand import derive_instance, occurrence_of, unedited_instances
from platforms.reference_crm.pm_rules import PmRule
from platforms.reference_crm.service import IdempotencyKeyReused, _db_errors, _fingerprint, in_savepoint

FLAVOURS = ("native", "singles")
#: events one batch write takes
MAX_BATCH = 500
#: live rows, written as the meeting-key index's own condition (`deleted = 0`): SQLite uses
#: a partial index only for a query that states its WHERE term, and `deleted IS 0` made
#: every look-up by (uid, recurrence_id) a scan of the organisation's events
_LIVE = pm.events.c.deleted == sa.false()
DEFAULT_HORIZON_DAYS = 90
#: how far back a series is expanded when the flavour is set (older instances are history)
LOOKBACK_DAYS = 30
_CHUNK = 500


@dataclass(frozen=True)
class CalendarSettings:
    flavour: str = "native"
    horizon_days: int = DEFAULT_HORIZON_DAYS
    horizon_from: float = 0.0
    horizon_until: float = 0.0

    def window(self) -> tuple[datetime, datetime]:
        return (datetime.fromtimestamp(self.horizon_from, timezone.utc),
                datetime.fromtimestamp(self.horizon_until, timezone.utc))


@dataclass(frozen=True)
class EventWrite:
    """One item of `put_events`: `put_event`'s arguments."""

    event: Event
    event_id: str | None = None
    owner_id: str | None = None
    expected_version: int | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class PmEvent:
    """A row of the PM calendar (see pm_schema.py for `kind` and `edited`)."""

    id: str
    org_id: str
    kind: str
    series_id: str | None
    edited: bool
    owner_id: str | None
    event: Event
    deleted: bool
    version: int
    updated_at: float
    change_seq: int

    @property
    def is_record(self) -> bool:
        """Whether the row is a canonical record (not an unedited instance)."""
        return self.kind != "instance" or self.edited

    def to_side_record(self) -> EventRecord:
        gone = self.deleted or not self.is_record
        return EventRecord(side="platform", external_id=self.id, content=None if gone else self.event,
                           deleted=gone, etag=str(self.version), updated_at=self.updated_at, owner=self.owner_id)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "org_id": self.org_id, "kind": self.kind, "series_id": self.series_id,
                "edited": self.edited, "owner_id": self.owner_id, "event": self.event.model_dump(mode="json"),
                "deleted": self.deleted, "version": self.version, "updated_at": self.updated_at,
                "change_seq": self.change_seq}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "PmEvent":
        return cls(**{**d, "event": Event(**d["event"])})

    @classmethod
    def from_row(cls, r: Any) -> "PmEvent":
        return cls(id=r.id, org_id=r.org_id, kind=r.kind, series_id=r.series_id, edited=bool(r.edited),
                   owner_id=r.owner_id, event=Event(**r.event), deleted=bool(r.deleted), version=int(r.version),
                   updated_at=float(r.updated_at), change_seq=int(r.change_seq))


def _event_json(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="json")


class CrmCalendar:
    """The PM calendar of one ReferenceCrm (reach it as `crm.calendar`). Thread-safe like the CRM."""

    def __init__(self, crm: Any) -> None:
        self.crm = crm

    # ---------------------------------------------------------------- settings, projects, rules

    @_db_errors
    def configure(self, org_id: str, flavour: str, *, horizon_days: int = DEFAULT_HORIZON_DAYS,
                  now: float | None = None) -> CalendarSettings:
        """Set the organisation's flavour. The horizon runs `horizon_days` from `now`.

        A flavour is chosen before the organisation has events: switching would mean
        converting every series, which no product does in place.
        """
        if flavour not in FLAVOURS:
            raise Fatal(f"unknown calendar flavour {flavour!r}")
        now = time.time() if now is None else now
        with self.crm._write(org_id) as conn:
            current = self._settings(conn, org_id)
            has_events = conn.execute(sa.select(sa.func.count()).select_from(pm.events).where(
                pm.events.c.org_id == org_id, _LIVE)).scalar()
            if has_events and current.flavour != flavour:
                raise Fatal("the calendar flavour cannot change once the organisation has events")
            values = {"flavour": flavour, "horizon_days": int(horizon_days),
                      "horizon_from": now - LOOKBACK_DAYS * 86400, "horizon_until": now + horizon_days * 86400}
            conn.execute(pm.calendar_orgs.delete().where(pm.calendar_orgs.c.org_id == org_id))
            conn.execute(pm.calendar_orgs.insert().values(org_id=org_id, **values))
            return CalendarSettings(**values)

    def _settings(self, conn: Connection, org_id: str) -> CalendarSettings:
        r = conn.execute(sa.select(pm.calendar_orgs).where(pm.calendar_orgs.c.org_id == org_id)).first()
        if r is None:
            now = time.time()
            return CalendarSettings("native", DEFAULT_HORIZON_DAYS, now - LOOKBACK_DAYS * 86400,
                                    now + DEFAULT_HORIZON_DAYS * 86400)
        return CalendarSettings(r.flavour, int(r.horizon_days), float(r.horizon_from), float(r.horizon_until))

    @_db_errors
    def settings(self, org_id: str) -> CalendarSettings:
        with self.crm._read() as conn:
            return self._settings(conn, org_id)

    @_db_errors
    def create_project(self, org_id: str, name: str, *, actor: str = "api") -> str:
        with self.crm._write(org_id) as conn:
            seq = self.crm._next_seq(conn, org_id, None, "project_create", actor)
            project_id = f"pm_p_{seq}"
            conn.execute(pm.projects.insert().values(id=project_id, org_id=org_id, name=name, updated_at=time.time()))
            return project_id

    @_db_errors
    def list_projects(self, org_id: str) -> dict[str, str]:
        """Project id -> name."""
        with self.crm._read() as conn:
            rows = conn.execute(sa.select(pm.projects).where(pm.projects.c.org_id == org_id)).all()
        return {r.id: r.name for r in rows}

    @_db_errors
    def configure_rules(self, org_id: str, rules: Sequence[PmRule]) -> None:
        """Replace the organisation's calendar rules (existing events are not re-checked)."""
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise Fatal("rule names must be unique within an organisation")
        for r in rules:
            pm_rules.validate_definition(r)
        with self.crm._write(org_id) as conn:
            conn.execute(pm.rules.delete().where(pm.rules.c.org_id == org_id))
            if rules:
                conn.execute(pm.rules.insert(), [{"org_id": org_id, "position": i, **r.to_row()}
                                                 for i, r in enumerate(rules)])

    def _rules(self, conn: Connection, org_id: str) -> list[PmRule]:
        rows = conn.execute(sa.select(pm.rules).where(pm.rules.c.org_id == org_id)
                            .order_by(pm.rules.c.position)).all()
        return [PmRule.from_row(r) for r in rows]

    @_db_errors
    def get_rules(self, org_id: str) -> list[PmRule]:
        with self.crm._read() as conn:
            return self._rules(conn, org_id)

    # ---------------------------------------------------------------- row helpers

    def _load(self, conn: Connection, org_id: str, event_id: str) -> Any:
        return conn.execute(sa.select(pm.events).where(pm.events.c.org_id == org_id,
                                                       pm.events.c.id == event_id)).first()

    def _by_key(self, conn: Connection, org_id: str, uid: str, recurrence_id: str) -> Any:
        return conn.execute(sa.select(pm.events).where(
            pm.events.c.org_id == org_id, pm.events.c.uid == uid, pm.events.c.recurrence_id == recurrence_id,
            _LIVE)).first()

    def _idem_lookup(self, conn: Connection, org_id: str, key: str | None, fp: str) -> PmEvent | None:
        if not key:
            return None
        row = conn.execute(sa.select(t.idempotency).where(t.idempotency.c.org_id == org_id,
                                                          t.idempotency.c.key == key)).first()
        if row is None:
            return None
        if row.fingerprint != fp:
            raise IdempotencyKeyReused("idempotency key reused with a different request")
        return PmEvent.from_json(row.result)

    def _idem_store(self, conn: Connection, org_id: str, key: str | None, fp: str, rec: PmEvent) -> PmEvent:
        if key:
            conn.execute(t.idempotency.insert().values(org_id=org_id, key=key, fingerprint=fp, record_id=rec.id,
                                                       result=rec.to_json(), created_at=time.time()))
        return rec

    def _get(self, conn: Connection, org_id: str, event_id: str) -> PmEvent:
        return PmEvent.from_row(self._load(conn, org_id, event_id))

    def _insert(self, conn: Connection, org_id: str, *, kind: str, event: Event, owner_id: str | None,
                actor: str, series_id: str | None = None, edited: bool = False, derived: bool = False) -> str:
        """A new row. A derived (unedited) instance draws no sequence number (pm_schema.py)."""
        if derived:
            seq, event_id = 0, f"pm_i_{uuid.uuid4().hex[:20]}"
        else:
            seq = self.crm._next_seq(conn, org_id, None, "event_create", actor)
            event_id = f"{'pm_s' if kind == 'series' else 'pm_e'}_{seq}"
            conn.execute(t.change_log.update().where(t.change_log.c.seq == seq).values(record_id=event_id))
        conn.execute(pm.events.insert().values(
            id=event_id, org_id=org_id, kind=kind, series_id=series_id, edited=edited, owner_id=owner_id,
            project_id=event.project, uid=event.uid, recurrence_id=event.recurrence_id, starts=event.start,
            event=_event_json(event), deleted=False, version=1, updated_at=time.time(), change_seq=seq))
        return event_id

    def _update(self, conn: Connection, row: Any, *, actor: str, derived: bool = False, **values: Any) -> None:
        """Rewrite a row; a derived rewrite (an unedited instance following its series) draws no number."""
        if "event" in values:
            ev: Event = values["event"]
            values.update(event=_event_json(ev), project_id=ev.project, starts=ev.start,
                          uid=ev.uid, recurrence_id=ev.recurrence_id)
        if not derived:
            values["change_seq"] = self.crm._next_seq(conn, row.org_id, row.id, "event_update", actor)
        conn.execute(pm.events.update().where(pm.events.c.id == row.id).values(
            version=row.version + 1, updated_at=time.time(), **values))

    def _soft_delete(self, conn: Connection, row: Any, actor: str) -> None:
        seq = self.crm._next_seq(conn, row.org_id, row.id, "event_delete", actor)
        conn.execute(pm.events.update().where(pm.events.c.id == row.id).values(
            deleted=True, version=row.version + 1, updated_at=time.time(), change_seq=seq))

    def _instances(self, conn: Connection, org_id: str, uid: str) -> list[Any]:
        return conn.execute(sa.select(pm.events).where(
            pm.events.c.org_id == org_id, pm.events.c.uid == uid, pm.events.c.kind == "instance",
            _LIVE)).all()

    def _series_row(self, conn: Connection, org_id: str, uid: str) -> Any:
        row = self._by_key(conn, org_id, uid, "")
        return row if row is not None and row.kind == "series" else None

    def _resync(self, conn: Connection, org_id: str, uid: str, settings: CalendarSettings,
                actor: str = "system") -> int:
        """Bring a series' unedited instance rows in line with the series, its
        "this and following" exceptions and the horizon; returns how many rows it added.

        Edited instances (exceptions) are left as they are. No feed entries: the
        rows touched here are not canonical records.
        """
        series = self._series_row(conn, org_id, uid)
        rows = self._instances(conn, org_id, uid)
        if series is None:
            wanted: dict[str, Event] = {}
        else:
            master = Event(**series.event)
            splits = [Event(**r.event) for r in rows if r.edited and r.event.get("range") == "THISANDFUTURE"]
            lo, hi = settings.window()
            wanted = unedited_instances(master, splits, lo, hi)
        added = 0
        held = set()
        for r in rows:
            if series is not None and r.series_id != series.id:
                conn.execute(pm.events.update().where(pm.events.c.id == r.id).values(series_id=series.id))
            held.add(r.recurrence_id)
            if r.edited:
                continue
            want = wanted.get(r.recurrence_id)
            if want is None:
                conn.execute(pm.events.delete().where(pm.events.c.id == r.id))
            elif Event(**r.event) != want or r.owner_id != series.owner_id:
                self._update(conn, r, actor=actor, derived=True, event=want, owner_id=series.owner_id)
        for key, inst in wanted.items():
            if key not in held:
                self._insert(conn, org_id, kind="instance", event=inst, owner_id=series.owner_id, actor=actor,
                             series_id=series.id, derived=True)
                added += 1
        return added

    def _validate(self, conn: Connection, org_id: str, event: Event, flavour: str) -> None:
        inherited = ""
        if event.recurrence_id:
            master = self._by_key(conn, org_id, event.uid, "")
            inherited = master.project_id if master is not None else ""
        projects = frozenset(r.id for r in conn.execute(
            sa.select(pm.projects.c.id).where(pm.projects.c.org_id == org_id)).all())
        err = pm_rules.first_violation(self._rules(conn, org_id), event, projects=projects,
                                       inherited_project=inherited)
        if err is not None:
            raise err
        if flavour == "singles" and event.is_series:
            # This platform has to expand a series itself; one it cannot expand it refuses.
            try:
                lo = datetime(2000, 1, 1, tzinfo=timezone.utc)
                unedited_instances(event, (), lo, lo + timedelta(days=1))
            except Exception:  # dateutil reports a bad rule with several exception types
                raise ValidationRejected("the platform cannot expand this recurrence", field="rrule",
                                         rule="recurrence the platform can expand") from None

    # ---------------------------------------------------------------- canonical writes (the adapter's)

    @_db_errors
    def put_event(self, org_id: str, event: Event, *, event_id: str | None = None, owner_id: str | None = None,
                  expected_version: int | None = None, idempotency_key: str | None = None, actor: str = "api",
                  enforce_rules: bool = True) -> PmEvent:
        """Create (event_id None) or replace one canonical record: a single event, a
        series master or an exception. `owner_id` None keeps the current owner.

        A create whose (uid, recurrence_id) a live row holds returns that row as it is
        (the meeting is claimed once); an empty uid gets a new one.
        """
        (got,) = self.put_events(org_id, [EventWrite(event, event_id=event_id, owner_id=owner_id,
                                                      expected_version=expected_version,
                                                      idempotency_key=idempotency_key)],
                                 actor=actor, enforce_rules=enforce_rules)
        if isinstance(got, ConnectorError):
            raise got
        return got

    @_db_errors
    def put_events(self, org_id: str, items: Sequence["EventWrite"], *, actor: str = "sync",
                   enforce_rules: bool = True) -> list["PmEvent | ConnectorError"]:
        """`put_event` for many items in one transaction, a savepoint each: a refused item
        (a rule, a stale version, a gone event) rolls back alone and comes back as its
        error in its place; the others commit together. Database trouble fails the whole
        batch (Transient): nothing of it is committed, and a retry with the same keys is
        safe. One transaction instead of one per event is most of a first sync's write time."""
        if len(items) > MAX_BATCH:
            raise Fatal(f"a batch write takes at most {MAX_BATCH} items")
        out: list[PmEvent | ConnectorError] = []
        with self.crm._write(org_id) as conn:
            for item in items:
                fp = _fingerprint({"op": "cal_put", "id": item.event_id, "event": _event_json(item.event),
                                   "owner": item.owner_id, "expected": item.expected_version})
                out.append(in_savepoint(conn, lambda: self._put_once(conn, org_id, item, fp, actor, enforce_rules)))
        return out

    def _put_once(self, conn: Connection, org_id: str, item: "EventWrite", fp: str, actor: str,
                  enforce_rules: bool) -> "PmEvent":
        """One item of a batch: its earlier answer under the same idempotency key, or its write."""
        done = self._idem_lookup(conn, org_id, item.idempotency_key, fp)
        if done is None:
            rec = self._put(conn, org_id, item.event, item.event_id, item.owner_id, item.expected_version, actor,
                            enforce_rules)
            done = self._idem_store(conn, org_id, item.idempotency_key, fp, rec)
        return done

    def _put(self, conn: Connection, org_id: str, event: Event, event_id: str | None, owner_id: str | None,
             expected_version: int | None, actor: str, enforce_rules: bool) -> PmEvent:
        settings = self._settings(conn, org_id)
        singles = settings.flavour == "singles"
        row = None
        if event_id is not None:
            row = self._load(conn, org_id, event_id)
            if row is None or row.deleted:
                raise NotFound("event not found")
            self.crm._check_version(row, expected_version)
            if event.uid not in ("", row.uid):
                raise ValidationRejected("the meeting key of an event cannot change", field="uid",
                                         rule="meeting key is fixed")
            if event.recurrence_id not in ("", row.recurrence_id):
                raise ValidationRejected("the meeting key of an event cannot change", field="recurrence_id",
                                         rule="meeting key is fixed")
            event = event.model_copy(update={"uid": row.uid, "recurrence_id": row.recurrence_id})
        elif not event.uid:
            event = event.model_copy(update={"uid": f"{uuid.uuid4().hex}@pm.reference-crm"})
        if enforce_rules:
            self._validate(conn, org_id, event, settings.flavour)
        if row is None:
            row = self._by_key(conn, org_id, event.uid, event.recurrence_id)
            if row is not None and not (singles and row.kind == "instance" and not row.edited):
                return PmEvent.from_row(row)  # the meeting is already here: claimed, not duplicated
        owner = owner_id if owner_id is not None else (row.owner_id if row is not None else None)
        if row is None:
            if not singles or not event.recurrence_id:
                kind = "series" if singles and event.is_series else "event"
                new_id = self._insert(conn, org_id, kind=kind, event=event, owner_id=owner, actor=actor)
            else:
                series = self._series_row(conn, org_id, event.uid)
                new_id = self._insert(conn, org_id, kind="instance", event=event, owner_id=owner, actor=actor,
                                      series_id=series.id if series is not None else None, edited=True)
            if singles:
                self._resync(conn, org_id, event.uid, settings, actor)
            return self._get(conn, org_id, new_id)
        if singles and row.kind == "instance":
            self._update(conn, row, actor=actor, event=event, owner_id=owner, edited=True)
        elif singles:
            self._update(conn, row, actor=actor, event=event, owner_id=owner,
                         kind="series" if event.is_series else "event")
        else:
            self._update(conn, row, actor=actor, event=event, owner_id=owner)
        if singles:
            self._resync(conn, org_id, event.uid, settings, actor)
        return self._get(conn, org_id, row.id)

    @_db_errors
    def delete_event(self, org_id: str, event_id: str, *, expected_version: int | None = None,
                     idempotency_key: str | None = None, actor: str = "api") -> PmEvent:
        """Delete a record (soft: the row stays as a tombstone for the feed).

        A series master takes its exceptions (and, in "singles", its instances) with
        it. Deleting an exception gives the instance back to its series: in "singles"
        the exception row becomes a tombstone and a fresh unedited instance replaces
        it. Deleting an unedited instance row (a platform user removing one
        occurrence in "singles") cancels that occurrence, which makes it an exception.
        """
        fp = _fingerprint({"op": "cal_delete", "id": event_id, "expected": expected_version})
        with self.crm._write(org_id) as conn:
            done = self._idem_lookup(conn, org_id, idempotency_key, fp)
            if done is not None:
                return done
            row = self._load(conn, org_id, event_id)
            if row is None:
                raise NotFound("event not found")
            if not row.deleted:
                self.crm._check_version(row, expected_version)
                self._delete(conn, org_id, row, actor)
            return self._idem_store(conn, org_id, idempotency_key, fp, self._get(conn, org_id, event_id))

    def _delete(self, conn: Connection, org_id: str, row: Any, actor: str) -> None:
        settings = self._settings(conn, org_id)
        if row.kind == "instance" and not row.edited:
            cancelled = Event(**row.event).model_copy(update={"status": "cancelled"})
            self._update(conn, row, actor=actor, event=cancelled, edited=True)
            return
        self._soft_delete(conn, row, actor)
        if not row.recurrence_id:
            # A master goes with its exceptions; unedited instances are not records: dropped.
            for other in conn.execute(sa.select(pm.events).where(
                    pm.events.c.org_id == org_id, pm.events.c.uid == row.uid, pm.events.c.recurrence_id != "",
                    _LIVE)).all():
                if other.kind == "instance" and not other.edited:
                    conn.execute(pm.events.delete().where(pm.events.c.id == other.id))
                else:
                    self._soft_delete(conn, other, actor)
        elif settings.flavour == "singles":
            self._resync(conn, org_id, row.uid, settings, actor)

    # ---------------------------------------------------------------- reads

    @_db_errors
    def get_event(self, org_id: str, event_id: str) -> PmEvent | None:
        with self.crm._read() as conn:
            row = self._load(conn, org_id, event_id)
        return PmEvent.from_row(row) if row is not None else None

    @_db_errors
    def get_events(self, org_id: str, event_ids: Sequence[str]) -> dict[str, PmEvent]:
        """Rows by id, tombstones included; ids of other organisations are absent."""
        ids = list(dict.fromkeys(event_ids))
        out: dict[str, PmEvent] = {}
        with self.crm._read() as conn:
            for i in range(0, len(ids), _CHUNK):
                rows = conn.execute(sa.select(pm.events).where(
                    pm.events.c.org_id == org_id, pm.events.c.id.in_(ids[i:i + _CHUNK]))).all()
                out.update((r.id, PmEvent.from_row(r)) for r in rows)
        return out

    @_db_errors
    def find_by_key(self, org_id: str, uid: str, recurrence_id: str = "") -> PmEvent | None:
        with self.crm._read() as conn:
            row = self._by_key(conn, org_id, uid, recurrence_id)
        return PmEvent.from_row(row) if row is not None else None

    @_db_errors
    def list_events(self, org_id: str, *, include_deleted: bool = False, kinds: Iterable[str] | None = None,
                    uid: str | None = None) -> list[PmEvent]:
        """Rows as the platform's calendar view lists them, by start (in "singles":
        single events and instances; pass kinds=("series",) for the hidden series)."""
        q = sa.select(pm.events).where(pm.events.c.org_id == org_id)
        if not include_deleted:
            q = q.where(_LIVE)
        if kinds is not None:
            q = q.where(pm.events.c.kind.in_(list(kinds)))
        if uid is not None:
            q = q.where(pm.events.c.uid == uid)
        with self.crm._read() as conn:
            return [PmEvent.from_row(r) for r in conn.execute(q.order_by(pm.events.c.starts, pm.events.c.id)).all()]

    @_db_errors
    def changes_since(self, org_id: str, after: int, limit: int = 500) -> tuple[list[PmEvent], int]:
        """Records changed after change number `after`, oldest first, tombstones included;
        each appears once, in its latest state. Unedited instances have number 0 and
        never appear. The returned number is the last record's (or `after`)."""
        with self.crm._read() as conn:
            rows = conn.execute(sa.select(pm.events).where(
                pm.events.c.org_id == org_id, pm.events.c.change_seq > int(after))
                .order_by(pm.events.c.change_seq).limit(limit)).all()
        recs = [PmEvent.from_row(r) for r in rows]
        return recs, (recs[-1].change_seq if recs else int(after))

    @_db_errors
    def feed_head(self, org_id: str) -> int:
        """The newest change number of this organisation's calendar (0 before any): no
        cursor this database issued is larger."""
        with self.crm._read() as conn:
            head = conn.execute(sa.select(sa.func.max(pm.events.c.change_seq))
                                .where(pm.events.c.org_id == org_id)).scalar()
        return int(head or 0)

    # ---------------------------------------------------------------- the horizon ("singles")

    @_db_errors
    def extend_horizon(self, org_id: str, until: datetime) -> int:
        """Expand every series up to `until` (never backwards); returns the instance rows added.

        The rows added are unedited instances, which are not canonical records, so
        rolling the horizon adds nothing to the feed and bumps no record's version.
        """
        with self.crm._write(org_id) as conn:
            settings = self._settings(conn, org_id)
            if settings.flavour != "singles":
                return 0
            new_until = max(settings.horizon_until, until.timestamp())
            conn.execute(pm.calendar_orgs.update().where(pm.calendar_orgs.c.org_id == org_id)
                         .values(horizon_until=new_until))
            settings = CalendarSettings(settings.flavour, settings.horizon_days, settings.horizon_from, new_until)
            uids = conn.execute(sa.select(pm.events.c.uid).where(
                pm.events.c.org_id == org_id, pm.events.c.kind == "series", _LIVE)).all()
            return sum(self._resync(conn, org_id, u.uid, settings) for u in uids)

    # ---------------------------------------------------------------- user edits (demo, tests)

    def user_create(self, org_id: str, owner_id: str, *, user: str = "pm_user", enforce_rules: bool = True,
                    **fields: Any) -> PmEvent:
        """A platform user adds an event (a series when `rrule` is given); the platform picks its uid."""
        return self.put_event(org_id, Event(**fields), owner_id=owner_id, actor=user, enforce_rules=enforce_rules)

    def user_edit(self, org_id: str, event_id: str, *, user: str = "pm_user", enforce_rules: bool = True,
                  **fields: Any) -> PmEvent:
        """A platform user changes some fields of an event, series or (in "singles") one
        instance row, which makes that instance an exception; the rest stay as they are."""
        current = self.get_event(org_id, event_id)
        if current is None or current.deleted:
            raise NotFound("event not found")
        merged = Event(**{**current.event.model_dump(), **fields})
        return self.put_event(org_id, merged, event_id=event_id, expected_version=current.version, actor=user,
                              enforce_rules=enforce_rules)

    def user_edit_instance(self, org_id: str, series_id: str, recurrence_id: str, *, user: str = "pm_user",
                           enforce_rules: bool = True, **fields: Any) -> PmEvent:
        """A platform user edits one occurrence of a series (moves, retitles, cancels it,
        or with range="THISANDFUTURE" this one and the following): the occurrence
        becomes an exception, in either flavour."""
        with self.crm._read() as conn:
            series = self._load(conn, org_id, series_id)
            if series is None or series.deleted or series.recurrence_id:
                raise NotFound("series not found")
            row = self._by_key(conn, org_id, series.uid, recurrence_id)
            splits = [Event(**r.event) for r in self._instances(conn, org_id, series.uid)
                      if r.edited and r.event.get("range") == "THISANDFUTURE"]
        master = Event(**series.event)
        if row is not None:
            merged = Event(**{**Event(**row.event).model_dump(), **fields})
            return self.put_event(org_id, merged, event_id=row.id, expected_version=row.version, actor=user,
                                  enforce_rules=enforce_rules)
        base = derive_instance(master, occurrence_of(master, recurrence_id), splits)
        if base is None:
            raise NotFound("occurrence not found")
        merged = Event(**{**base.model_dump(), **fields})
        return self.put_event(org_id, merged, owner_id=series.owner_id, actor=user, enforce_rules=enforce_rules)

    def user_cancel_instance(self, org_id: str, series_id: str, recurrence_id: str, *,
                             user: str = "pm_user") -> PmEvent:
        return self.user_edit_instance(org_id, series_id, recurrence_id, user=user, status="cancelled")

    def user_cancel(self, org_id: str, event_id: str, *, user: str = "pm_user") -> PmEvent:
        """A platform user cancels an event or a whole series (it is removed from the calendar)."""
        return self.delete_event(org_id, event_id, actor=user)
