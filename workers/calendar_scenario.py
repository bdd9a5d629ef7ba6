"""An organisation whose people keep their meetings in Google Calendar and Outlook, and
whose project-management platform schedules work, for the demo and the tests.

Three connected calendars on emulators reached through the real client libraries:
Ann and Cy on Google Calendar (one emulator, a token each; invitations between them
land in both calendars with one iCalUID, as in one Google Workspace domain) and Bob on
Microsoft 365 (the Graph emulator, reached with httpx; Ann's invitations reach his
Outlook calendar with her iCalUID, as an invitation by mail would). The platform is the reference PM calendar, in the
flavour asked for ("native" series and exceptions, or "singles": series expanded
over a horizon). Its rules: an event needs a project (the organisation's fix files it
under "General"), and none lasts more than 8 hours (no fix: such an event waits in
quarantine, with the rule's name).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from connectors.google_calendar import GoogleCalendar
from connectors.graph_calendar import GraphCalendar
from connectors.protocols import WriteRequest
from emulators.google_calendar import CalendarState
from emulators.google_calendar import create_app as google_calendar_app
from emulators.graph import GraphState
from emulators.graph import create_app as graph_app
from emulators.server import RunningServer, serve
from models.errors import Fatal
from models.event import Event
from platforms.reference_crm.pm_adapter import ReferenceCrmCalendar
from platforms.reference_crm.pm_rules import PmRule
from platforms.reference_crm.service import ReferenceCrm
from store import repo
from store.db import make_engine, migrate, session_factory
from workers.stages import connect

DOMAIN = "acme.example"
TZ = "Europe/Paris"
#: the kinds the scenario's calendars sync
KINDS = ["calendar"]


@dataclass
class Person:
    name: str
    email: str
    user_id: str
    provider: str
    connection_id: str = ""
    token: str = ""


def wall(value: datetime) -> str:
    """A wall-clock time in the canonical form (models/event.py)."""
    return value.replace(tzinfo=None).isoformat()


def soon(days: int, hour: int = 9) -> datetime:
    """`days` from today at `hour` in TZ: inside every horizon and delta window."""
    today = datetime.now(ZoneInfo(TZ)).replace(hour=hour, minute=0, second=0, microsecond=0)
    return today + timedelta(days=days)


class CalendarScenario:
    def __init__(self, store_url: str, crm_url: str, *, org_id: str | None = None, flavour: str = "native",
                 connection_prefix: str | None = None) -> None:
        self.connection_prefix = connection_prefix
        self.org_id = org_id or f"org-{uuid.uuid4().hex[:8]}"
        migrate(store_url)
        self.sessions = session_factory(make_engine(store_url))
        self.crm = ReferenceCrm(crm_url)
        self.platform = ReferenceCrmCalendar(self.crm)
        self.google = CalendarState(default_user=f"ann@{DOMAIN}", time_zone=TZ)
        self.graph = GraphState(tokens=set())
        self.servers: list[RunningServer] = [serve(google_calendar_app(self.google)), serve(graph_app(self.graph))]
        self.people = {
            "ann": Person("Ann Archer", f"ann@{DOMAIN}", "ann", "google"),
            "cy": Person("Cy Cole", f"cy@{DOMAIN}", "cy", "google"),
            "bob": Person("Bob Baker", f"bob@{DOMAIN}", "bob", "microsoft"),
        }
        self.flavour = self._seed_platform(flavour)
        with self.sessions.begin() as s:
            if repo.get_org(s, self.org_id) is None:
                repo.create_org(s, self.org_id, "Acme", {})
        for p in self.people.values():
            self._connect(p)

    # -- the calendars -------------------------------------------------------------
    def _connect(self, p: Person) -> None:
        p.token = f"token-{p.user_id}-{uuid.uuid4().hex[:6]}"
        sync = {"fix_rules": [f"default_project={self.general}"]}
        if p.provider == "google":
            self.google.add_token(p.token, p.email)
            self.google.calendar(p.email, TZ)
            settings = {"calendar_endpoint": self.servers[0].base_url + "calendar/v3/", "token": p.token,
                        "kinds": KINDS, "sync": sync}
        else:
            self.graph.calendar.add_user(p.email, token=p.token, name=p.name)
            settings = {"endpoint": self.servers[1].base_url, "token": p.token, "email": p.email,
                        "kinds": KINDS, "sync": sync}
        p.connection_id = (f"{self.connection_prefix}-{p.user_id}" if self.connection_prefix
                           else f"cal-{p.user_id}-{uuid.uuid4().hex[:6]}")
        connect(self.sessions, p.connection_id, org_id=self.org_id, user_id=p.user_id, provider=p.provider,
                account=p.email, settings=settings, kind="calendar")

    def ui(self, who: str):
        """What a person does in their calendar's own UI, through its API (a client of its own)."""
        p = self.people[who]
        if p.provider == "google":
            return GoogleCalendar.for_emulator(self.servers[0].base_url + "calendar/v3/", token=p.token,
                                               account=f"ui-{uuid.uuid4().hex[:6]}")
        token = p.token
        return GraphCalendar(self.servers[1].base_url, lambda: token, address=p.email)

    def write(self, who: str, *events: Event) -> list:
        """Create events in a person's calendar as they would in its UI; the records."""
        results = self.ui(who).create_many([WriteRequest(key=f"ui{i}", content=e) for i, e in enumerate(events)])
        bad = [r.error for r in results if r.error is not None]
        if bad:
            raise bad[0]
        return [r.record for r in results]

    def invite(self, organizer: str, title: str, start: datetime, hours: float, guests: list[str]) -> str:
        """The organizer's meeting, with a copy in each guest's calendar (same iCalUID); its uid."""
        body = {"summary": title,
                "start": {"dateTime": start.isoformat(), "timeZone": TZ},
                "end": {"dateTime": (start + timedelta(hours=hours)).isoformat(), "timeZone": TZ},
                "attendees": [{"email": self.people[organizer].email, "responseStatus": "accepted"}]
                + [{"email": self.people[g].email} for g in guests]}
        copies = self.google.invite(self.people[organizer].email, body)
        uid = copies[self.people[organizer].email]["iCalUID"]
        for g in guests:  # a guest on Microsoft 365 gets it by mail; Outlook files it with the same UID
            if self.people[g].provider != "google":
                self.graph.calendar.receive_invitation(self.people[g].email, {
                    "subject": title,
                    "start": {"dateTime": wall(start), "timeZone": TZ},
                    "end": {"dateTime": wall(start + timedelta(hours=hours)), "timeZone": TZ},
                    "attendees": [{"emailAddress": {"address": a["email"]}, "type": "required"}
                                  for a in body["attendees"]]},
                    uid=uid, organizer=self.people[organizer].email)
        return uid

    def answer(self, who: str, uid: str, response: str) -> None:
        """A guest answers the invitation in their calendar."""
        ui = self.ui(who)
        mine = _by_uid(ui, uid)
        result = ui.update_many([WriteRequest(key="answer", external_id=mine.external_id, etag=mine.etag,
                                               content=mine.content.with_response(self.people[who].email, response))])
        if result[0].error is not None:
            raise result[0].error

    def calendar_events(self, who: str) -> list[Event]:
        return [r.content for r in _drain(self.ui(who)) if r.content is not None and not r.deleted]

    # -- the platform --------------------------------------------------------------------
    def _seed_platform(self, flavour: str) -> str:
        cal = self.crm.calendar
        try:
            cal.configure(self.org_id, flavour)
        except Fatal:  # a kept platform (the demo's --keep) holds events: it keeps its flavour
            flavour = cal.settings(self.org_id).flavour
        projects = {name: pid for pid, name in cal.list_projects(self.org_id).items()}
        self.general = projects.get("General") or cal.create_project(self.org_id, "General")
        self.launch = projects.get("Launch") or cal.create_project(self.org_id, "Launch")
        self.project_names = {self.general: "General", self.launch: "Launch"}
        cal.configure_rules(self.org_id, [PmRule.project_required(), PmRule.end_after_start(),
                                          PmRule.max_duration("at most 8 hours", minutes=480)])
        return flavour

    def records(self) -> dict[tuple[str, str], object]:
        """(uid, recurrence_id) -> the platform's live record, as the sync reads it."""
        by_id: dict = {}
        cursor = None
        while True:
            page = self.platform.changes_since(self.org_id, cursor)
            if not page.records:
                return {(r.content.uid, r.content.recurrence_id): r for r in by_id.values()
                        if not r.deleted and r.content is not None}
            by_id.update({r.external_id: r for r in page.records})
            cursor = page.cursor

    @property
    def connections(self) -> dict[str, str]:
        return {who: p.connection_id for who, p in self.people.items()}

    def close(self) -> None:
        for server in self.servers:
            server.stop()


def _drain(cal) -> list:
    records, cursor, page = [], None, None
    while True:
        result = cal.list_changes(cursor, page)
        records += result.records
        if result.next_page is None:
            return records
        page = result.next_page


def _by_uid(cal, uid: str):
    for rec in _drain(cal):
        if rec.content is not None and rec.content.uid == uid and not rec.content.recurrence_id:
            return rec
    raise LookupError("no such event in this calendar")
