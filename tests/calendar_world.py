"""One organisation's calendar world for pipeline tests: the real store, the real
reference platform (PM calendar, either flavour), the real calendar pipeline, and
calendars on the Google Calendar emulator reached by google-api-python-client.

`cycle()` runs a connection's steps in the workflow's order, each through the pipeline
object the worker keeps, with a new connector per step as the worker builds one.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from activities.calendar import CalendarPipeline
from connectors.google_calendar import GoogleCalendar
from emulators.google_calendar import CalendarState, create_app
from emulators.server import serve
from models.workflow import CycleRef
from platforms.reference_crm.pm_adapter import ReferenceCrmCalendar
from platforms.reference_crm.service import ReferenceCrm
from store import repo
from store.db import make_engine, migrate, session_factory
from sync.kinds.calendar import CALENDAR

_cycles = itertools.count(1)
TZ = "Europe/Paris"
DOMAIN = "acme.example"


def timed(summary: str, day: datetime, hours: float = 1.0, **extra) -> dict:
    """A Google event body at `day` (aware, in TZ)."""
    return {"summary": summary, "start": {"dateTime": day.isoformat(), "timeZone": TZ},
            "end": {"dateTime": (day + timedelta(hours=hours)).isoformat(), "timeZone": TZ}, **extra}


def soon(days: int, hour: int = 9) -> datetime:
    """A wall-clock time `days` from today in TZ (inside every horizon and window)."""
    today = datetime.now(ZoneInfo(TZ)).replace(hour=hour, minute=0, second=0, microsecond=0)
    return today + timedelta(days=days)


class CalendarWorld:
    def __init__(self, store_url: str, crm_url: str, *, flavour: str = "native", org_settings: dict | None = None,
                 claim_wait_s: float | None = None) -> None:
        migrate(store_url)
        self.sessions = session_factory(make_engine(store_url))
        self.crm = ReferenceCrm(crm_url)
        self.platform = ReferenceCrmCalendar(self.crm)
        self.org = f"org-{uuid.uuid4().hex[:8]}"
        self.crm.calendar.configure(self.org, flavour)
        self.google = CalendarState(default_user=f"ann@{DOMAIN}", time_zone=TZ)
        self.server = serve(create_app(self.google))
        self.pipeline = CalendarPipeline(self.sessions, CALENDAR, self.platform, self._connector, wait=lambda s: None)
        if claim_wait_s is not None:
            import activities.calendar as cal
            cal.CLAIM_WAIT_S = claim_wait_s
        with self.sessions.begin() as s:
            repo.create_org(s, self.org, "Acme", dict(org_settings or {}))
        self.tokens: dict[str, str] = {}

    def _connector(self, info) -> GoogleCalendar:
        return GoogleCalendar.for_emulator(self.server.base_url + "calendar/v3/", token=self.tokens[info.account_ref],
                                           account=info.connection_id)

    def connect(self, user: str, *, sync: dict | None = None) -> str:
        address = f"{user}@{DOMAIN}"
        token = f"tok-{user}-{uuid.uuid4().hex[:6]}"
        self.google.add_token(token, address)
        self.google.calendar(address, TZ)
        self.tokens[address] = token
        cid = f"cal-{user}-{uuid.uuid4().hex[:6]}"
        with self.sessions.begin() as s:
            repo.create_connection(s, id=cid, org_id=self.org, user_id=user, provider="google", account_ref=address,
                                   settings={"token": token, "sync": sync or {}})
        return cid

    def ui(self, address: str) -> GoogleCalendar:
        """What the user does in Google Calendar's own UI, through the API (its own client)."""
        return GoogleCalendar.for_emulator(self.server.base_url + "calendar/v3/", token=self.tokens[address],
                                           account=f"ui-{uuid.uuid4().hex[:6]}")

    def ref(self, cid: str) -> CycleRef:
        return CycleRef(connection_id=cid, cycle_id=f"c{next(_cycles)}")

    def cycle(self, cid: str) -> dict[str, Any]:
        ref = self.ref(cid)
        p = self.pipeline
        p.read_platform(self.org)  # the organisation's workflow reads the platform's feed
        out = {"fetch": p.fetch_mailbox(ref), "platform": p.fetch_platform(ref), "plan": p.plan(ref),
               "write": p.write(ref)}
        out["rejections"] = p.handle_rejections(ref)
        return out

    def settle(self, *cids: str, rounds: int = 3) -> None:
        """Cycles until nothing is left to write (each connection in turn)."""
        for _ in range(rounds):
            for cid in cids:
                self.cycle(cid)

    # -- what a platform user sees ------------------------------------------------------
    def records(self) -> dict[str, Any]:
        """(uid, recurrence_id) -> live platform record, in the canonical shape."""
        by_id: dict[str, Any] = {}
        cursor = None
        while True:
            page = self.platform.changes_since(self.org, cursor)
            if not page.records:
                return {(r.content.uid, r.content.recurrence_id): r for r in by_id.values()
                        if not r.deleted and r.content is not None}
            by_id.update({r.external_id: r for r in page.records})
            cursor = page.cursor

    def calendar_titles(self, address: str) -> list[str]:
        """The titles of a calendar's live events, as its owner sees them."""
        return [e.body.get("summary", "") for e in self.google.calendar(address).events.values()
                if not e.deleted and e.body.get("status") != "cancelled"]

    def items(self, cid: str) -> dict[str, Any]:
        with self.sessions() as s:
            rows = repo.items_by_status(s, cid, ["pending", "applied", "skipped", "conflict", "duplicate",
                                                 "quarantined", "deferred"], kind="calendar")
        return {(r.side, r.external_id): r for r in rows}

    def close(self) -> None:
        self.server.stop()
