"""Calendar: initial sync throughput, provider calls per changed event, meetings once, push latency.

One organisation of Google Calendar and Microsoft 365 calendars (`graph` of them on the
Graph emulator, reached by GraphCalendar over httpx; the others on the Calendar emulator,
reached by google-api-python-client); each calendar holds `events` events (single events,
series masters and their exceptions), `series` of them series. 30% of each calendar's
meetings are shared with a colleague: the organizer's meeting and the provider's copy of
it in the attendee's calendar (its own event id, the same UID) — mailbox i shares 15% of
its meetings with i+1 (it organizes them) and 15% with i-1 (it is invited); across the
two providers only single meetings are shared, the copy arriving as an invitation from
outside. Every fifth Google series has a moved and a cancelled instance (exceptions,
keyed by (UID, RECURRENCE-ID)). Each calendar's meetings take hours of their own (a
person is rarely in two meetings at once; what is, is for the duplicate search). The
platform is the reference PM calendar, "native" flavour (series and exceptions stored as
they are). Calendars are filled through the emulators' Python state APIs (no per-event
HTTP).

Initial sync (no Temporal: the real calendar pipeline's steps in the workflow's order,
the organisation's platform read first, one calendar after another, a new connector per
step as the worker builds, like tests/calendar_world.py). Measured in the same run:

- the naive baseline: each provider's connector with page_size=1 (and batch_size=1 on
  Google), one event per HTTP call, listing a sample calendar;
- `meetings_once`: from the platform, one live record per (uid, recurrence_id) that a
  calendar holds (read through each provider's connector), shared meetings included,
  and no record for anything else; again after the steady state's changes.

Steady state (same world, after the initial sync): changes a person makes one at a
time (retitle, move, cancel an instance, edit one instance, add, delete, edit a shared
meeting as its organizer, answer as an attendee), each followed by the cycles a push
would start (every calendar whose events changed, echoes of our own writes included);
a platform user's edits (written to the calendar, then their echoes); then a burst of
changes per calendar synced in one round of cycles. Provider calls are every HTTP call
the pipeline's connectors made (listings, look-ups, batched writes), per changed
calendar event (an edit that reaches the attendee's copy changes two). Beside each, the
naive client on the same deltas: one event per call (+1 call per provider write).

Latency (Temporal dev server, the real worker activities, the real webhook app; Ann and
Bob on Google, Cy on Microsoft 365): the worker opens the events.watch channels and the
Graph subscription itself (subscriptions.maintain) on the webhook app; the Calendar
emulator posts its `exists` pings to /webhooks/calendar and the Graph emulator its change
notifications to /webhooks/graph as changes happen. Timed from the change in the calendar
until the platform record shows it: a new event, an edit, a meeting in two Google
calendars, a meeting across Google and Microsoft 365 (both push), an edit in Outlook.

    python -m bench [--quick] calendar
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo

from bench.report import list_at_least

Report = Callable[..., None]

DOMAIN = "acme.example"
SEED = 23
#: full size (the brief's): 10 calendars x 5,000 events, 500 of them series
#: (rounds: changes made one per push; burst: changes per calendar synced at once; push: latency runs)
#: (graph: how many of the mailboxes are Microsoft 365 calendars, the others being Google)
FULL = {"mailboxes": 10, "graph": 5, "events": 5_000, "series": 500, "rounds": 40, "burst": 100, "push": 30}
QUICK = {"mailboxes": 3, "graph": 1, "events": 150, "series": 15, "rounds": 6, "burst": 6, "push": 2}
SHARED = 0.30
PROVIDER_NAMES = {"google": "Google Calendar", "graph": "Microsoft 365 (Graph)"}
ZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC", "Europe/London")
UTC = timezone.utc
SYLLABLES = ("ka", "lo", "mi", "ter", "vun", "sa", "do", "rel", "pix", "an", "bo", "quel", "ti", "ras", "fen",
             "gu", "ny", "zor", "wel", "cha", "ib", "om", "ush", "et", "yar", "dri", "spo", "lum", "hak", "ve")


# ---------------------------------------------------------------------------- corpus


@dataclass
class Meeting:
    """A single event or a series, organized by one calendar, maybe copied into another."""

    n: int
    organizer: int
    attendee: int | None
    series: bool
    exceptions: bool
    all_day: bool
    body: dict
    slot: tuple[int, int] = (0, 0)
    #: the organizer's event id once seeded (the attendee's copy has its own)
    ids: dict[int, str] = field(default_factory=dict)
    uid: str = ""
    first: datetime | None = None


class Corpus:
    """Meetings per calendar; seeding them into the emulator through its state API."""

    def __init__(self, mailboxes: int, events: int, series: int, *, graph: int = 0, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.users = [f"u{i}" for i in range(mailboxes)]
        #: the last `graph` calendars are Microsoft 365 (Graph), the others Google
        self.providers = ["google"] * (mailboxes - graph) + ["graph"] * graph
        self.today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        sharing = mailboxes > 1
        k_series = int(round(series * SHARED / 2)) if sharing else 0
        own_series = series - 2 * k_series
        # exceptions: every fifth series (moved + cancelled instance), counted in each calendar that holds it
        exc_per_mailbox = 2 * (math.ceil(own_series / 5) + 2 * math.ceil(k_series / 5))
        singles = events - series - exc_per_mailbox
        if singles < 0:
            raise ValueError("too many series for that many events")
        k_singles = int(round(singles * SHARED / 2)) if sharing else 0
        own_singles = singles - 2 * k_singles
        self.meetings: list[Meeting] = []
        for i in range(mailboxes):
            nxt = (i + 1) % mailboxes if sharing else None
            for kind, own, shared in (("series", own_series, k_series), ("single", own_singles, k_singles)):
                for j in range(own + shared):
                    attendee = nxt if j >= own else None
                    is_series = kind == "series"
                    if is_series and attendee is not None and self.providers[attendee] != self.providers[i]:
                        attendee = None  # across providers only single meetings are shared (see seed)
                    idx = j if j < own else j - own
                    n = len(self.meetings)
                    self.meetings.append(Meeting(n=n, organizer=i, attendee=attendee, series=is_series,
                                                 exceptions=is_series and idx % 5 == 0
                                                 and self.providers[i] == "google",
                                                 all_day=not is_series and n % 20 == 0, body={}))
        self._slots()
        for m in self.meetings:
            m.body = self._body(m)

    def address(self, i: int) -> str:
        return f"{self.users[i]}@{DOMAIN}"

    def _slots(self) -> None:
        """Each calendar's meetings in hours of their own: a person's calendar rarely holds
        two meetings at once, and two events at the same time, with the same people and
        alike titles, are what the duplicate search is for. A shared meeting takes an hour
        free in both calendars; an all-day event a day of its own. Hours are UTC instants."""
        hours = [(d, h) for d in range(-120, 365) for h in range(6, 20)]
        free = []
        for _ in self.users:
            order = hours[:]
            self.rng.shuffle(order)
            days = list(range(-120, 365))
            self.rng.shuffle(days)
            free.append({"order": order, "taken": set(), "days": days, "pos": 0})
        for m in self.meetings:
            if m.all_day:
                m.slot = (free[m.organizer]["days"].pop(), 0)
                continue
            holders = [m.organizer] + ([m.attendee] if m.attendee is not None else [])
            mine = free[m.organizer]
            while True:
                if mine["pos"] >= len(mine["order"]):
                    raise ValueError("more meetings than hours in a calendar: fewer events per calendar")
                slot = mine["order"][mine["pos"]]
                mine["pos"] += 1
                if all(slot not in free[h]["taken"] for h in holders):
                    break
            for h in holders:
                free[h]["taken"].add(slot)
            m.slot = slot

    def _word(self) -> str:
        """A made-up word (a codename): titles of different meetings share little, as real ones do."""
        return "".join(self.rng.choice(SYLLABLES) for _ in range(self.rng.randint(2, 3))).capitalize()

    def _body(self, m: Meeting) -> dict:
        rng = self.rng
        tz = ZONES[m.n % len(ZONES)]
        attendees = [{"email": self.address(m.organizer), "responseStatus": "accepted"}]
        if m.attendee is not None:
            attendees.append({"email": self.address(m.attendee), "responseStatus": rng.choice(
                ["accepted", "needsAction", "tentative"])})
        if rng.random() < 0.5:
            attendees.append({"email": f"guest{m.n}@client{m.n % 37}.example"})
        body: dict[str, Any] = {"summary": f"{self._word()} {self._word()}",
                                "description": f"agenda {m.n}", "location": f"Room {m.n % 17}",
                                "attendees": attendees}
        day, hour = m.slot
        if m.all_day:
            d = (self.today + timedelta(days=day)).date()
            body["start"], body["end"] = {"date": d.isoformat()}, {"date": (d + timedelta(days=1)).isoformat()}
            return body
        at = self.today + timedelta(days=day, hours=hour)  # arithmetic in UTC: a wall clock may repeat
        local = at.astimezone(ZoneInfo(tz))
        length = timedelta(minutes=rng.choice([30, 45, 60]))
        body["start"] = {"dateTime": local.isoformat(), "timeZone": tz}
        body["end"] = {"dateTime": (at + length).astimezone(ZoneInfo(tz)).isoformat(), "timeZone": tz}
        if m.series:
            m.first = local
            freq = rng.choice(["WEEKLY", "WEEKLY", "DAILY"])
            body["recurrence"] = [f"RRULE:FREQ={freq};COUNT={rng.randint(6, 20)}"]
        return body

    def seed(self, google, graph) -> None:
        """Every meeting into its organizer's calendar and its copy into the attendee's,
        then the exceptions, through the emulators' state APIs.

        Within a provider the emulator copies an invitation (Google: `invite`, Graph:
        `invite`); across providers the attendee's copy arrives as an invitation from
        outside with the organizer's UID (what the invitation e-mail makes of it).
        Exceptions are made on Google series only (Graph series here are plain)."""
        for m in self.meetings:
            org, org_p = self.address(m.organizer), self.providers[m.organizer]
            att = self.address(m.attendee) if m.attendee is not None else None
            att_p = self.providers[m.attendee] if m.attendee is not None else None
            if org_p == "google":
                if att_p == "google":
                    copies = google.invite(org, m.body)
                    m.ids[m.attendee] = copies[att]["id"]
                    ev = copies[org]
                else:
                    ev = google.put_event(org, m.body)
                m.ids[m.organizer], m.uid = ev["id"], ev["iCalUID"]
                if att_p == "graph":
                    m.ids[m.attendee] = graph.calendar.receive_invitation(att, graph_body(m.body, m.first), uid=m.uid,
                                                                          organizer=org)
            else:
                (eid,) = graph.calendar.seed([graph_body(m.body, m.first)], user=org)
                m.ids[m.organizer] = eid
                m.uid = graph.calendar.user(org).items[eid].uid
                if att_p == "graph":
                    m.ids[m.attendee] = graph.calendar.invite(eid, [att], organizer=org)[att]
                elif att_p == "google":
                    m.ids[m.attendee] = google.put_event(att, {**m.body, "iCalUID": m.uid,
                                                               "organizer": {"email": org}})["id"]
            if m.exceptions:
                edit_instance(google, self.address(m.organizer), instance_id(m, 1), moved_times(m, 1, 2))
                cancel_instance(google, self.address(m.organizer), instance_id(m, 2))


def graph_body(body: dict, first: datetime | None) -> dict:
    """A Google event body as Outlook would hold the same meeting (Graph's shape)."""
    out: dict[str, Any] = {"subject": body["summary"],
                           "body": {"contentType": "text", "content": body.get("description") or ""},
                           "location": {"displayName": body.get("location") or ""},
                           "attendees": [{"emailAddress": {"address": a["email"]}, "type": "required"}
                                         for a in body.get("attendees") or []]}
    if "date" in body["start"]:
        out["isAllDay"] = True
        out["start"] = {"dateTime": f"{body['start']['date']}T00:00:00", "timeZone": "UTC"}
        out["end"] = {"dateTime": f"{body['end']['date']}T00:00:00", "timeZone": "UTC"}
        return out
    for k in ("start", "end"):
        wall = datetime.fromisoformat(body[k]["dateTime"]).replace(tzinfo=None).isoformat()
        out[k] = {"dateTime": wall, "timeZone": body[k]["timeZone"]}
    if body.get("recurrence"):
        rule = dict(p.split("=", 1) for p in body["recurrence"][0].removeprefix("RRULE:").split(";"))
        pattern: dict[str, Any] = {"type": "daily" if rule["FREQ"] == "DAILY" else "weekly", "interval": 1}
        if rule["FREQ"] == "WEEKLY":
            pattern["daysOfWeek"] = [first.strftime("%A").lower()]
        out["recurrence"] = {"pattern": pattern, "range": {"type": "numbered", "startDate": first.date().isoformat(),
                                                           "numberOfOccurrences": int(rule["COUNT"])}}
    return out


def occurrence(m: Meeting, k: int) -> datetime:
    """The k-th start of a series (aware, in the series' zone), by dateutil as Google expands it."""
    from dateutil.rrule import rrulestr

    rule = rrulestr(m.body["recurrence"][0].removeprefix("RRULE:"), dtstart=m.first)
    return list(rule[:k + 1])[k]


def instance_id(m: Meeting, k: int) -> str:
    """Google's id of the k-th instance: `{masterId}_{original start in UTC}`."""
    return f"{m.ids[m.organizer]}_{occurrence(m, k).astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def moved_times(m: Meeting, k: int, hours: int) -> dict:
    """The k-th instance's start and end, `hours` later."""
    tz = ZoneInfo(m.body["start"]["timeZone"])
    start = occurrence(m, k).astimezone(UTC) + timedelta(hours=hours)
    length = datetime.fromisoformat(m.body["end"]["dateTime"]) - datetime.fromisoformat(m.body["start"]["dateTime"])
    return {"start": {"dateTime": start.astimezone(tz).isoformat(), "timeZone": tz.key},
            "end": {"dateTime": (start + length).astimezone(tz).isoformat(), "timeZone": tz.key}}


def edit_instance(google, user: str, iid: str, patch: dict) -> dict:
    """What the user does in Google's UI to one event or instance (the emulator's own write path)."""
    with google._lock:
        return google.events_update(google.calendar(user), {}, iid, patch, {}, merge=True)[1]


def cancel_instance(google, user: str, iid: str) -> None:
    """The user deletes an event, or one instance of a series, in Google's UI."""
    with google._lock:
        google.events_delete(google.calendar(user), {}, iid, {})


# ---------------------------------------------------------------------------- the world


class World:
    """The emulator on a real port, the store, the PM calendar, the pipeline; a connector
    per step (as the worker builds them), each kept so its HTTP calls can be summed."""

    def __init__(self, tmp: Path, corpus: Corpus) -> None:
        from activities.calendar import CalendarPipeline
        from emulators.google_calendar import CalendarState, create_app
        from emulators.graph import GraphState
        from emulators.graph import create_app as graph_app
        from emulators.server import serve
        from platforms.reference_crm.pm_adapter import ReferenceCrmCalendar
        from platforms.reference_crm.service import ReferenceCrm
        from store import repo
        from store.db import make_engine, migrate, session_factory
        from sync.kinds.calendar import CALENDAR

        self.corpus = corpus
        store_url, crm_url = f"sqlite:///{tmp / 'store.db'}", f"sqlite:///{tmp / 'crm.db'}"
        migrate(store_url)
        self.sessions = session_factory(make_engine(store_url))
        self.crm = ReferenceCrm(crm_url)
        self.platform = ReferenceCrmCalendar(self.crm)
        self.org = f"org-{uuid.uuid4().hex[:8]}"
        self.crm.calendar.configure(self.org, "native")
        self.google = CalendarState(default_user=f"nobody@{DOMAIN}", time_zone="Europe/Paris")
        self.server = serve(create_app(self.google))
        self.endpoint = self.server.base_url + "calendar/v3/"
        self.graph = GraphState(tokens=set())
        self.graph.calendar.auto_notify = False  # no subscriptions here; the steady state reads deltas itself
        self.graph_server = serve(graph_app(self.graph))
        self.built: list = []
        self.pipeline = CalendarPipeline(self.sessions, CALENDAR, self.platform, self._connector, wait=lambda *a: None)
        self.tokens: dict[str, str] = {}
        self.cids: list[str] = []
        with self.sessions.begin() as s:
            repo.create_org(s, self.org, "Acme", {})
            for i, user in enumerate(corpus.users):
                address = corpus.address(i)
                token = f"tok-{user}-{uuid.uuid4().hex[:6]}"
                self.tokens[address] = token
                cid = f"cal-{user}-{uuid.uuid4().hex[:6]}"
                self.cids.append(cid)
                if corpus.providers[i] == "google":
                    self.google.add_token(token, address)
                    self.google.calendar(address, ZONES[i % len(ZONES)])
                    settings = {"token": token, "calendar_endpoint": self.endpoint}
                else:
                    self.graph.calendar.add_user(address, token=token)
                    settings = {"token": token, "endpoint": self.graph_server.base_url}
                repo.create_connection(s, id=cid, org_id=self.org, user_id=user,
                                       provider="google" if corpus.providers[i] == "google" else "microsoft",
                                       account_ref=address, settings=settings)

    def connector(self, i: int, *, account: str | None = None, **tuning):
        from connectors.google_calendar import GoogleCalendar
        from connectors.graph_calendar import GraphCalendar

        address = self.corpus.address(i)
        token = self.tokens[address]
        if self.corpus.providers[i] == "google":
            return GoogleCalendar.for_emulator(self.endpoint, token=token, account=account or self.cids[i], **tuning)
        return GraphCalendar(self.graph_server.base_url, lambda: token, address=address,
                             mailbox_key=account or self.cids[i], **tuning)

    def _connector(self, info):
        conn = self.connector(self.cids.index(info.connection_id))
        self.built.append(conn)
        return conn

    def naive(self, i: int):
        """One event per HTTP call: listing pages of one (Google: and writes one per call)."""
        extra = {"batch_size": 1} if self.corpus.providers[i] == "google" else {}
        return self.connector(i, account=f"naive-{uuid.uuid4().hex[:6]}", page_size=1, **extra)

    def calls(self) -> int:
        return sum(c.calls_made for c in self.built)

    def cycle(self, i: int, steps: dict | None = None) -> dict:
        """One cycle of calendar i, as the workflow runs it (the organisation's platform read first)."""
        from models.workflow import CycleRef

        ref = CycleRef(connection_id=self.cids[i], cycle_id=f"c-{uuid.uuid4().hex[:8]}")
        p = self.pipeline
        out: dict = {}
        for name, fn in (("read_platform", lambda: p.read_platform(self.org)), ("fetch_mailbox", lambda: p.fetch_mailbox(ref)),
                         ("fetch_platform", lambda: p.fetch_platform(ref)), ("plan", lambda: p.plan(ref)),
                         ("write", lambda: p.write(ref)), ("handle_rejections", lambda: p.handle_rejections(ref))):
            t0 = time.perf_counter()
            out[name] = fn()
            if steps is not None:
                steps[name] += time.perf_counter() - t0
        return out

    def cursor(self, i: int) -> str | None:
        from activities.pipeline import mailbox_stream
        from store import repo

        with self.sessions() as s:
            return repo.get_cursor(s, self.cids[i], mailbox_stream("calendar"))

    def count(self, i: int) -> int:
        """Events calendar i holds now: singles, series masters, exceptions (a cancelled instance too)."""
        snap = self.snap(i)
        if self.corpus.providers[i] == "google":
            with self.google._lock:
                events = self.google.calendar(self.corpus.address(i)).events
                return sum(1 for k in snap if not events[k].deleted)
        return len(snap)

    def snap(self, i: int) -> dict[str, Any]:
        """Calendar i's events as versions (Google: sequence numbers, Graph: change keys)."""
        address = self.corpus.address(i)
        if self.corpus.providers[i] == "google":
            with self.google._lock:
                return {k: st.seq for k, st in self.google.calendar(address).events.items()}
        with self.graph.lock:
            return {k: it.change_key for k, it in self.graph.calendar.user(address).items.items()}

    def snaps(self) -> list[dict[str, Any]]:
        return [self.snap(i) for i in range(len(self.corpus.users))]

    @staticmethod
    def diff(before: dict[str, Any], after: dict[str, Any]) -> int:
        """Events added, changed or removed between two snapshots of a calendar."""
        return sum(1 for k, v in after.items() if before.get(k) != v) + sum(1 for k in before if k not in after)

    def changed_since(self, before: list[dict[str, Any]]) -> list[int]:
        return [self.diff(b, self.snap(i)) for i, b in enumerate(before)]

    def records(self) -> dict[tuple[str, str], list]:
        """(uid, recurrence_id) -> the platform's live records holding it (a duplicate shows as two)."""
        latest: dict[str, Any] = {}
        cursor = None
        while True:
            page = self.platform.changes_since(self.org, cursor, limit=5_000)
            latest.update({r.external_id: r for r in page.records})
            cursor = page.cursor
            if page.next_page is None:
                break
        out: dict[tuple[str, str], list] = defaultdict(list)
        for r in latest.values():
            if not r.deleted and r.content is not None:
                out[(r.content.uid, r.content.recurrence_id)].append(r)
        return out

    def expected(self) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
        """What the calendars hold, by (UID, RECURRENCE-ID): every key, and those in more than
        one calendar. Read by a full listing of each calendar with a connector of its own
        (not counted), so both providers' events are keyed as the pipeline keys them."""
        holders: dict[tuple[str, str], int] = defaultdict(int)
        for i in range(len(self.corpus.users)):
            conn = self.connector(i, account=f"check-{uuid.uuid4().hex[:6]}")
            cursor, page = None, None
            while True:
                pg = conn.list_changes(cursor, page)
                for r in pg.records:
                    if not r.deleted and r.content is not None and r.content.uid:
                        holders[(r.content.uid, r.content.recurrence_id)] += 1
                page = pg.next_page
                if page is None:
                    break
        return set(holders), {k for k, n in holders.items() if n > 1}

    def close(self) -> None:
        self.server.stop()
        self.graph_server.stop()


# ---------------------------------------------------------------------------- initial sync


def initial(report: Report, w: World, say: Callable[[str], None], naive_sample: int) -> None:
    corpus = w.corpus
    n = len(corpus.users)
    listed = [w.count(i) for i in range(n)]
    total = sum(listed)
    kinds = {p: corpus.providers.count(p) for p in ("google", "graph") if p in corpus.providers}
    series = sum(1 for m in corpus.meetings if m.series) + sum(1 for m in corpus.meetings if m.series and m.attendee is not None)
    shared = sum(1 for m in corpus.meetings if m.attendee is not None)
    report("calendar.size.mailboxes", n, "", " + ".join(f"{k} {PROVIDER_NAMES[p]}" for p, k in kinds.items())
           + " calendars (emulators), one organisation, platform flavour native")
    report("calendar.size.events", total, "", f"listed events (singles, series masters, exceptions); "
                                              f"{min(listed):,}-{max(listed):,} per calendar")
    report("calendar.size.series", series, "", f"series masters over all calendars ({series // max(1, n):,} per calendar)")
    report("calendar.size.shared_meetings", shared, "", f"meetings in two calendars (organizer + attendee); "
                                                        f"{2 * shared / max(1, total):.0%} of events are copies of one")

    # -- the naive baseline: one event per HTTP call, on a sample calendar of each provider
    naive_by: dict[str, tuple[int, int, float]] = {}
    for p in kinds:
        naive = w.naive(corpus.providers.index(p))
        t0 = time.perf_counter()
        got = list_at_least(naive, naive_sample)
        naive_by[p] = (got, naive.calls_made, time.perf_counter() - t0)
    got = sum(v[0] for v in naive_by.values())
    naive_calls = sum(v[1] for v in naive_by.values()) / max(1, got)
    naive_s = sum(v[2] for v in naive_by.values())

    # -- the pipeline: every calendar's first cycle, one after another
    google_before = sum(w.google.stats()["calls"].values())
    calls_before = w.calls()
    steps: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    summary: dict[str, int] = defaultdict(int)
    for i in range(n):
        out = w.cycle(i, steps)
        wr = out["write"]
        summary["created"] += sum(wr.created.values())
        summary["updated"] += sum(wr.updated.values())
        summary["linked"] += wr.linked
        summary["deferred"] += wr.deferred
        summary["rejected"] += wr.rejected
        say(f"calendar {i + 1}/{n} synced at {time.perf_counter() - t0:.1f}s "
            f"(fetched {out['fetch_mailbox'].fetched:,}, created {sum(wr.created.values()):,}, linked {wr.linked:,})")
    elapsed = time.perf_counter() - t0
    calls = w.calls() - calls_before
    google_calls = sum(w.google.stats()["calls"].values()) - google_before
    report("calendar.initial.seconds", elapsed, "s", ", ".join(f"{k} {v:.1f}s" for k, v in steps.items()))
    report("calendar.initial.events_per_s", total / elapsed, "events/s",
           f"{total:,} calendar events into the platform, calendars one after another, SQLite")
    report("calendar.initial.writes", summary["created"], "platform creates",
           ", ".join(f"{k} {v:,}" for k, v in summary.items() if k != "created"))
    report("calendar.initial.calls", calls, "HTTP", f"{calls / total:.4f} per event "
                                                    f"({google_calls:,} operations the Google emulator served, batches unpacked)")
    report("calendar.baseline.naive_calls_per_event", naive_calls, "HTTP",
           "page_size=1 listing " + ", ".join(f"{g:,} records of a {PROVIDER_NAMES[p]} calendar ({c:,} calls)"
                                              for p, (g, c, _) in naive_by.items()))
    report("calendar.baseline.naive_list_events_per_s", got / naive_s, "events/s",
           f"listing alone, beside the pipeline's fetch_mailbox {total / max(1e-9, steps['fetch_mailbox']):,.0f} events/s")
    report("calendar.initial.calls_saved_vs_naive", naive_calls / max(1e-9, calls / total), "x",
           "HTTP calls per event: naive / pipeline")
    exactly_once(report, w, "calendar")


def exactly_once(report: Report, w: World, prefix: str) -> None:
    expected, shared = w.expected()
    recs = w.records()
    once = sum(1 for k in expected if len(recs.get(k, ())) == 1)
    shared_once = sum(1 for k in shared if len(recs.get(k, ())) == 1)
    missing = sum(1 for k in expected if k not in recs)
    dups = sum(1 for k in expected if len(recs.get(k, ())) > 1)
    extra = sum(1 for k in recs if k not in expected)
    report(f"{prefix}.meetings_once", once / max(1, len(expected)), "",
           f"{once:,}/{len(expected):,} (uid, recurrence_id) held by a calendar have one platform record (goal 1.0); "
           f"missing {missing:,}, duplicated {dups:,}, records for nothing {extra:,}")
    report(f"{prefix}.shared_meetings_once", shared_once / max(1, len(shared)), "",
           f"{shared_once:,}/{len(shared):,} keys in two calendars")


# ---------------------------------------------------------------------------- steady state

#: what a person does in a calendar, one at a time, in this order
MAILBOX_CHANGES = {"google": ("retitle", "move", "cancel_instance", "edit_instance", "add", "shared_edit", "answer",
                              "delete"),
                   # Graph series here have no instance-level changes (see Corpus.seed)
                   "graph": ("retitle", "move", "add", "shared_edit", "answer", "delete")}


class Changes:
    """Changes a person makes in Google Calendar (through the emulator's own write path),
    each on a meeting not touched before, so every change is a real one."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.rng = random.Random(SEED + 1)
        self.used: set[int] = set()
        self.added = 0

    def _pick(self, i: int, *, series: bool, shared: bool | None = None, attendee: bool = False,
              timed: bool = False) -> Meeting:
        for m in self.w.corpus.meetings:
            if m.n in self.used or m.series != series:
                continue
            if attendee:
                if m.attendee != i:
                    continue
            elif m.organizer != i or (shared is not None and (m.attendee is not None) != shared):
                continue
            if timed and "dateTime" not in m.body["start"]:
                continue
            if series and m.exceptions:
                continue
            self.used.add(m.n)
            return m
        raise RuntimeError("the corpus ran out of meetings to change; raise --size events")

    def make(self, i: int, k: int) -> str:
        """The k-th change in calendar i (kinds in turn); its kind."""
        kinds = MAILBOX_CHANGES[self.w.corpus.providers[i]]
        kind = kinds[k % len(kinds)]
        if self.w.corpus.providers[i] == "graph":
            self._graph(kind, i)
        else:
            self._google(kind, i)
        return kind

    def _graph(self, kind: str, i: int) -> None:
        cal, me = self.w.graph.calendar, self.w.corpus.address(i)
        if kind == "retitle":
            m = self._pick(i, series=False, shared=False)
            cal.user_edit(m.ids[i], {"subject": f"{m.body['summary']} (renamed)"}, user=me)
        elif kind == "move":
            m = self._pick(i, series=False, shared=False, timed=True)
            body = graph_body(m.body, m.first)
            cal.user_edit(m.ids[i], {k: {"dateTime": (datetime.fromisoformat(body[k]["dateTime"])
                                                      + timedelta(hours=1)).isoformat(),
                                         "timeZone": body[k]["timeZone"]} for k in ("start", "end")}, user=me)
        elif kind == "add":
            self.added += 1
            day = self.w.corpus.today + timedelta(days=self.rng.randint(1, 60), hours=self.rng.randint(8, 17))
            cal.seed([{"subject": f"New meeting {self.added}",
                       "start": {"dateTime": day.replace(tzinfo=None).isoformat(), "timeZone": "UTC"},
                       "end": {"dateTime": (day + timedelta(hours=1)).replace(tzinfo=None).isoformat(),
                               "timeZone": "UTC"}}], user=me)
        elif kind == "shared_edit":
            m = self._pick(i, series=False, shared=True)
            cal.user_edit(m.ids[i], {"location": {"displayName": "Room 42 (moved)"}}, user=me)
        elif kind == "answer":
            m = self._pick(i, series=False, attendee=True)
            cal.respond(me, m.ids[i], "declined")
        elif kind == "delete":
            m = self._pick(i, series=False, shared=False)
            cal.user_delete(m.ids[i], user=me)
        else:
            raise ValueError(kind)

    def _google(self, kind: str, i: int) -> None:
        g, c = self.w.google, self.w.corpus
        me = c.address(i)
        if kind == "retitle":
            m = self._pick(i, series=False, shared=False)
            edit_instance(g, me, m.ids[i], {"summary": f"{m.body['summary']} (renamed)"})
        elif kind == "move":
            m = self._pick(i, series=False, shared=False, timed=True)
            edit_instance(g, me, m.ids[i], {k: {"dateTime": (datetime.fromisoformat(m.body[k]["dateTime"]).astimezone(UTC)
                                                             + timedelta(hours=1)).isoformat(),
                                                "timeZone": m.body[k]["timeZone"]} for k in ("start", "end")})
        elif kind == "cancel_instance":
            m = self._pick(i, series=True, shared=False)
            cancel_instance(g, me, instance_id(m, 3))
        elif kind == "edit_instance":
            m = self._pick(i, series=True)
            edit_instance(g, me, instance_id(m, 4), {"summary": f"{m.body['summary']} (one week only)"})
        elif kind == "add":
            self.added += 1
            day = c.today + timedelta(days=self.rng.randint(1, 60), hours=self.rng.randint(8, 17))
            g.put_event(me, {"summary": f"New meeting {self.added}", "start": {"dateTime": day.isoformat(),
                                                                              "timeZone": "UTC"},
                             "end": {"dateTime": (day + timedelta(hours=1)).isoformat(), "timeZone": "UTC"}})
        elif kind == "shared_edit":
            m = self._pick(i, series=False, shared=True)
            edit_instance(g, me, m.ids[i], {"location": "Room 42 (moved)"})
        elif kind == "answer":
            m = self._pick(i, series=False, attendee=True)
            mine = g.event(me, m.ids[i])
            answers = [dict(a, responseStatus="declined" if a["email"] == me else a.get("responseStatus"))
                       for a in mine.get("attendees") or []]
            edit_instance(g, me, m.ids[i], {"attendees": [{k: v for k, v in a.items() if k in (
                "email", "responseStatus", "optional", "displayName")} for a in answers]})
        elif kind == "delete":
            m = self._pick(i, series=False, shared=False)
            cancel_instance(g, me, m.ids[i])
        else:
            raise ValueError(kind)

    def platform_edit(self, i: int, recs: dict) -> None:
        """A platform user retitles a meeting calendar i organizes (the pipeline writes it to Google)."""
        m = self._pick(i, series=False, shared=None)
        (rec,) = recs[(m.uid, "")]
        self.w.crm.calendar.user_edit(self.w.org, rec.external_id, title=f"{m.body['summary']} (from the platform)")


@dataclass
class Tally:
    changed: int = 0
    calls: int = 0
    cycles: int = 0
    naive: int = 0
    writes: int = 0


def settle(w: World, todo: set[int], seen: list[int], tally: Tally, *, rounds: int = 4) -> None:
    """The cycles pushes would start: each calendar whose events changed since its last
    cycle (the person's change, Google's copy of it, or an echo of our own write), and
    the calendars the platform read wakes. The naive client lists the same delta first."""
    for _ in range(rounds):
        todo |= {i for i in range(len(seen)) if w.diff(seen[i], w.snap(i))}
        if not todo:
            return
        for i in sorted(todo):
            tally.naive += naive_delta(w, i)
            seen[i] = w.snap(i)
            before = w.calls()
            out = w.cycle(i)
            tally.calls += w.calls() - before
            tally.cycles += 1
            wr = out["write"]
            writes = sum(d.get("mailbox", 0) for d in (wr.created, wr.updated, wr.deleted))
            tally.writes += writes
            tally.naive += writes  # one write per call
        todo = set()


def naive_delta(w: World, i: int) -> int:
    """HTTP calls of one event per call over the delta calendar i's next cycle will read."""
    from models.errors import CursorExpired

    naive = w.naive(i)
    cursor, page = w.cursor(i), None
    try:
        while True:
            pg = naive.list_changes(cursor, page)
            page = pg.next_page
            if page is None:
                return naive.calls_made
    except CursorExpired:
        return naive.calls_made


def steady(report: Report, w: World, say: Callable[[str], None], rounds: int, burst: int) -> None:
    n = len(w.corpus.users)
    changes = Changes(w)
    seen = w.snaps()
    # settle first: whatever the initial sync left (echoes, deferred claims)
    warm = Tally()
    settle(w, set(range(n)), seen, warm)

    one = Tally()
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    t0 = time.perf_counter()
    for r in range(rounds):
        i = r % n
        before = w.snaps()
        kind = changes.make(i, r // n + i)
        changed = sum(w.changed_since(before))
        t = Tally(changed=changed)
        settle(w, set(), seen, t)
        for f in ("changed", "calls", "cycles", "naive", "writes"):
            setattr(one, f, getattr(one, f) + getattr(t, f))
        per_kind[kind][0] += t.calls
        per_kind[kind][1] += t.changed
    one_s = time.perf_counter() - t0
    report("calendar.steady.calls_per_changed", one.calls / max(1, one.changed), "HTTP",
           f"{one.calls:,} provider calls / {one.changed:,} changed calendar events, one change per push, "
           f"{rounds} changes, {one.cycles} cycles (goal <= 1.1)")
    report("calendar.steady.worst_kind_calls_per_changed", max(c / max(1, e) for c, e in per_kind.values()), "HTTP",
           "by kind, calls/changed: " + ", ".join(f"{k} {c}/{e}" for k, (c, e) in per_kind.items()))
    report("calendar.steady.cycle_ms", 1000 * one_s / max(1, one.cycles), "ms", "mean cycle, incl. the naive listing")
    report("calendar.baseline.naive_steady_calls_per_changed", one.naive / max(1, one.changed), "HTTP",
           "one event per call on the same deltas (+1 per provider write)")

    # a platform user's edits: the pipeline writes each to Google, whose copies echo back
    plat = Tally()
    recs = w.records()
    edits = max(2, rounds // 4)
    for r in range(edits):
        changes.platform_edit(r % n, recs)
        plat.changed += 1
        woken = w.pipeline.read_platform(w.org).woken
        settle(w, {w.cids.index(c) for c in woken if c in w.cids}, seen, plat)
    report("calendar.steady.platform_edit_calls", plat.calls / max(1, plat.changed), "HTTP",
           f"per platform edit: {plat.writes:,} batched writes to the calendars and the listings of their echoes, "
           f"{plat.cycles} cycles for {edits} edits")

    # a burst: many changes in every calendar, then one push's worth of cycles
    b = Tally()
    before = w.snaps()
    for i in range(n):
        for k in range(burst):
            changes.make(i, k)
    b.changed = sum(w.changed_since(before))
    t0 = time.perf_counter()
    settle(w, set(), seen, b)
    burst_s = time.perf_counter() - t0
    report("calendar.burst.calls_per_changed", b.calls / max(1, b.changed), "HTTP",
           f"{b.calls:,} calls / {b.changed:,} changed events ({burst} changes per calendar), {b.cycles} cycles")
    report("calendar.burst.events_per_s", b.changed / max(1e-9, burst_s), "events/s", "changed events synced")
    report("calendar.baseline.naive_burst_calls_per_changed", b.naive / max(1, b.changed), "HTTP",
           "one event per call on the same deltas")
    report("calendar.burst.calls_saved_vs_naive", b.naive / max(1, b.calls), "x", "naive calls / pipeline calls")
    exactly_once(report, w, "calendar.after_changes")


# ---------------------------------------------------------------------------- entry


def backfill_and_steady(report: Report, *, mailboxes: int, graph: int, events: int, series: int, rounds: int,
                        burst: int, say: Callable[[str], None], naive_sample: int) -> None:
    corpus = Corpus(mailboxes, events, series, graph=min(graph, mailboxes))
    with tempfile.TemporaryDirectory(prefix="concord-bench-calendar-") as tmp:
        w = World(Path(tmp), corpus)
        try:
            t0 = time.perf_counter()
            corpus.seed(w.google, w.graph)
            say(f"seeded {len(corpus.meetings):,} meetings into {mailboxes} calendars through the emulator's state "
                f"API in {time.perf_counter() - t0:.1f}s")
            initial(report, w, say, naive_sample)
            steady(report, w, say, rounds, burst)
        finally:
            w.close()


def parse_size(text: str | None, quick: bool) -> dict:
    """`--size mailboxes=10,events=1000` over the quick or full sizes."""
    size = dict(QUICK if quick else FULL)
    for part in filter(None, (text or "").split(",")):
        key, _, value = part.partition("=")
        if key.strip() not in size:
            raise ValueError(f"unknown size {key!r}; choose from {', '.join(size)}")
        if not value.strip().isdigit():
            raise ValueError(f"size {key.strip()} wants a whole number, not {value!r}")
        size[key.strip()] = int(value)
    return size


def run(report: Report = print, *, quick: bool = False, say: Callable[[str], None] = print,
        size: dict | None = None, latency_runs: int | None = None, latency: bool = True) -> None:
    size = dict(size or (QUICK if quick else FULL))
    runs = latency_runs or size.pop("push", 5 if quick else 30)
    if size.get("mailboxes", 0) > 0:
        backfill_and_steady(report, say=say, naive_sample=100 if quick else 1_000, **size)
    if latency and runs > 0:
        asyncio.run(_latency(report, runs, say))


# ---------------------------------------------------------------------------- latency


def _items(sessions, cids: list[str]) -> dict:
    """Per connection, its calendar items by (status, error code): what a stuck change is waiting on."""
    from collections import Counter

    from store import repo

    out = {}
    with sessions() as s:
        for cid in cids:
            rows = repo.items_by_status(s, cid, ["pending", "skipped", "conflict", "duplicate", "quarantined",
                                                 "deferred"], kind="calendar")
            out[cid] = dict(Counter((r.status, r.error_code) for r in rows))
    return out


async def _cycles(client, cids: dict[str, str]) -> dict:
    from workers import client as api

    out = {}
    for name, cid in cids.items():
        try:
            st = await api.state(client, cid)
            out[name] = (st.cycles, st.last_error)
        except Exception as exc:  # noqa: BLE001 - a diagnosis, never the failure itself
            out[name] = type(exc).__name__
    return out


async def _latency(report: Report, runs: int, say: Callable[[str], None]) -> None:
    """Calendar push -> platform record, on the dev server with the real worker and webhook app."""
    from temporalio.testing import WorkflowEnvironment

    from api.app import create_app
    from api.webhooks import Waker, WebhookDeps, store_lookup, temporal_signal, webhook_router
    from bench.report import percentile
    from connectors.registry import CALENDAR_CHANNEL, GRAPH_SUBSCRIPTION
    from emulators.google_calendar import CalendarState
    from emulators.google_calendar import create_app as calendar_app
    from emulators.graph import GraphState
    from emulators.graph import create_app as graph_app
    from emulators.server import free_port, serve
    from platforms.reference_crm.service import ReferenceCrm
    from store import repo
    from store import subscriptions as subs
    from store.db import make_engine, migrate, session_factory
    from store.vault import KeyRing, generate_key
    from workers import client as api
    from workers.devstack import find_temporal_cli, search_attribute_args
    from workers.temporal_client import DATA_CONVERTER, TASK_QUEUE
    from workers.worker import build_activities, make_worker

    tmp = Path(tempfile.mkdtemp(prefix="concord-bench-calendar-push-"))
    store_url, crm_url = f"sqlite:///{tmp / 'store.db'}", f"sqlite:///{tmp / 'crm.db'}"
    migrate(store_url)
    sessions = session_factory(make_engine(store_url))
    crm = ReferenceCrm(crm_url)
    org = f"org-{uuid.uuid4().hex[:8]}"
    crm.calendar.configure(org, "native")
    google = CalendarState(default_user=f"nobody@{DOMAIN}", time_zone="Europe/Paris")
    gserver = serve(calendar_app(google))
    graph = GraphState(tokens=set())
    mserver = serve(graph_app(graph))
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=find_temporal_cli(),
                                                data_converter=DATA_CONVERTER,
                                                dev_server_extra_args=["--log-level", "error", *search_attribute_args()])
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    poll = 3600.0
    waker = Waker(temporal_signal(env.client, task_queue=tq, poll_interval_s=poll), store_lookup(sessions), window_s=1.0)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    hooks = serve(create_app([webhook_router(WebhookDeps(sessions=sessions, waker=waker))]), port=port)
    people = {"ann": f"ann@{DOMAIN}", "bob": f"bob@{DOMAIN}", "cy": f"cy@{DOMAIN}"}  # Cy on Microsoft 365
    cids: dict[str, str] = {}
    tokens: dict[str, str] = {}
    try:
        with sessions.begin() as s:
            repo.create_org(s, org, "Acme", {})
            for name, address in people.items():
                token = tokens[name] = f"tok-{name}-{uuid.uuid4().hex[:6]}"
                cids[name] = f"cal-{name}-{uuid.uuid4().hex[:6]}"
                if name == "cy":
                    graph.calendar.add_user(address, token=token)
                    provider, settings = "microsoft", {"token": token, "endpoint": mserver.base_url, "email": address}
                else:
                    google.add_token(token, address)
                    google.calendar(address, "Europe/Paris")
                    provider, settings = "google", {"token": token, "calendar_endpoint": gserver.base_url + "calendar/v3/"}
                repo.create_connection(s, id=cids[name], org_id=org, user_id=name, provider=provider,
                                       account_ref=address, settings={**settings, "kinds": ["calendar"]})
        # something to sync from the start: a week of Ann's meetings, some with Bob
        today = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        for k in range(20):
            at = today + timedelta(days=1 + k // 4, hours=2 * (k % 4))
            body = {"summary": f"Warm-up {k}", "start": {"dateTime": at.isoformat(), "timeZone": "UTC"},
                    "end": {"dateTime": (at + timedelta(hours=1)).isoformat(), "timeZone": "UTC"}}
            if k % 2:
                body["attendees"] = [{"email": people["ann"]}, {"email": people["bob"]}]
                google.invite(people["ann"], body)
            else:
                google.put_event(people["ann"], body)

        # the worker opens the events.watch channels itself (subscriptions.maintain) on our webhook app
        acts = build_activities(store_url, crm_url, keyring=KeyRing.parse(f"bench:{generate_key()}"),
                                webhook_base_url=base)
        async with make_worker(env.client, acts, task_queue=tq):
            for name in people:
                await api.start_sync(env.client, cids[name], org, "microsoft" if name == "cy" else "google",
                                     kinds=["calendar"], poll_interval_s=poll, task_queue=tq)
            for name in people:
                await api.wait_for_cycles(env.client, cids[name], 1, timeout=120)
            deadline = time.monotonic() + 60
            while True:
                with sessions() as s:
                    rows = [r for c in cids.values() for r in subs.list_for_connection(s, c, status="active")
                            if r.provider in (CALENDAR_CHANNEL.name, GRAPH_SUBSCRIPTION.name)]
                if len(rows) == len(cids):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker opened no events.watch channel or Graph subscription within 60 s")
                await asyncio.sleep(0.1)
            say(f"events.watch channels open: {len(google.channels)}, Graph subscriptions: "
                f"{len(graph.calendar.subscription_users)}; first cycles done")
            await asyncio.sleep(1.1)

            async def visible(check: Callable[[], bool], started: float, what: str) -> float:
                while not await asyncio.to_thread(check):
                    if time.perf_counter() - started > 30:
                        raise RuntimeError(f"{what}: not on the platform within 30 s ({waker.counters}; "
                                           f"items {await asyncio.to_thread(_items, sessions, list(cids.values()))}; "
                                           f"cycles {await _cycles(env.client, cids)})")
                    await asyncio.sleep(0.005)
                return time.perf_counter() - started

            def record_titled(uid: str, title: str) -> Callable[[], bool]:
                def check() -> bool:
                    rec = crm.calendar.find_by_key(org, uid, "")
                    return rec is not None and not rec.deleted and rec.event.title == title
                return check

            new_lat, edit_lat, shared_lat, graph_lat = [], [], [], []
            for i in range(runs + 1):  # the first is a warm-up, not counted
                at = today + timedelta(days=10 + i, hours=3)
                times = {"start": {"dateTime": at.isoformat(), "timeZone": "UTC"},
                         "end": {"dateTime": (at + timedelta(hours=1)).isoformat(), "timeZone": "UTC"}}
                # a new event in Ann's calendar
                started = time.perf_counter()
                ev = google.put_event(people["ann"], {"summary": f"Push {i}", **times})
                lat = await visible(record_titled(ev["iCalUID"], f"Push {i}"), started, "new event")
                if i:
                    new_lat.append(lat)
                await asyncio.sleep(1.1)  # outside the Waker's coalescing window: one wake per push
                # Ann retitles it
                started = time.perf_counter()
                edit_instance(google, people["ann"], ev["id"], {"summary": f"Push {i} (renamed)"})
                lat = await visible(record_titled(ev["iCalUID"], f"Push {i} (renamed)"), started, "edit")
                if i:
                    edit_lat.append(lat)
                await asyncio.sleep(1.1)
                # Ann invites Bob: both calendars push, both cycles race for the one record
                started = time.perf_counter()
                later = {k: {"dateTime": (datetime.fromisoformat(v["dateTime"]) + timedelta(hours=4)).isoformat(),
                             "timeZone": "UTC"} for k, v in times.items()}  # not at the same time as the one above
                copies = google.invite(people["ann"], {"summary": f"Shared {i}", **later,
                                                       "attendees": [{"email": people["ann"]},
                                                                     {"email": people["bob"]}]})
                uid = copies[people["ann"]]["iCalUID"]
                lat = await visible(record_titled(uid, f"Shared {i}"), started, "shared meeting")
                if i:
                    shared_lat.append(lat)
                await asyncio.sleep(1.1)
                # Ann invites Cy, on Microsoft 365: her calendar pushes (events.watch), his posts a
                # Graph change notification to /webhooks/graph as Outlook files the invitation
                body = {"summary": f"Across {i}", **{k: {"dateTime": (datetime.fromisoformat(v["dateTime"])
                                                                      + timedelta(hours=3)).isoformat(),
                                                         "timeZone": "UTC"} for k, v in later.items()},
                        "attendees": [{"email": people["ann"]}, {"email": people["cy"]}]}
                started = time.perf_counter()
                ev = google.put_event(people["ann"], body)
                await asyncio.to_thread(graph.calendar.receive_invitation, people["cy"], graph_body(body, None),
                                        uid=ev["iCalUID"], organizer=people["ann"])
                lat = await visible(record_titled(ev["iCalUID"], f"Across {i}"), started, "meeting across providers")
                if i:
                    shared_lat.append(lat)
                await asyncio.sleep(1.1)
                # Cy retitles a meeting of his own in Outlook: a Graph notification alone
                own = {k: {"dateTime": (datetime.fromisoformat(body[k]["dateTime"]) + timedelta(hours=2)).isoformat(),
                           "timeZone": "UTC"} for k in ("start", "end")}  # not at the time of the meeting above
                mine = await asyncio.to_thread(graph.calendar.seed, [graph_body(
                    {"summary": f"Cy's {i}", **own, "attendees": [{"email": people["cy"]}]}, None)], people["cy"])
                await asyncio.to_thread(graph.calendar.user_edit, mine[0], {"subject": f"Cy's {i}"}, people["cy"])
                uid = graph.calendar.user(people["cy"]).items[mine[0]].uid
                await visible(record_titled(uid, f"Cy's {i}"), time.perf_counter(), "a Graph event")
                await asyncio.sleep(1.1)
                started = time.perf_counter()
                await asyncio.to_thread(graph.calendar.user_edit, mine[0], {"subject": f"Cy's {i} (renamed)"},
                                        people["cy"])
                lat = await visible(record_titled(uid, f"Cy's {i} (renamed)"), started, "Graph edit")
                if i:
                    graph_lat.append(lat)
                await asyncio.sleep(1.1)
            # both calendars' cycles have run for the shared meetings: still one record each
            await asyncio.sleep(2.0)
            keys: dict[tuple[str, str], int] = defaultdict(int)
            for ev in crm.calendar.list_events(org):
                if ev.is_record and not ev.deleted:
                    keys[(ev.event.uid, ev.event.recurrence_id)] += 1
            dups = sum(1 for n in keys.values() if n > 1)
            every = new_lat + edit_lat + shared_lat + graph_lat
            report("calendar.push.runs", len(every), "",
                   f"{len(new_lat)} new, {len(edit_lat)} edited, {len(shared_lat)} shared (two calendars pushing: "
                   f"Google + Google, Google + Microsoft 365), {len(graph_lat)} edited on Microsoft 365; "
                   "one change, its pushes, on the dev server")
            report("calendar.push_to_visible.p50", statistics.median(every), "s",
                   "change in the calendar -> events.watch ping to /webhooks/calendar or Graph notification to "
                   "/webhooks/graph -> record on the platform")
            report("calendar.push_to_visible.p95", percentile(every, 95), "s", "goal <= 1 s")
            report("calendar.push_to_visible.max", max(every), "s")
            report("calendar.push.new_p95", percentile(new_lat, 95), "s")
            report("calendar.push.edit_p95", percentile(edit_lat, 95), "s")
            report("calendar.push.shared_p95", percentile(shared_lat, 95), "s", "the first of two pushes to land")
            report("calendar.push.graph_edit_p95", percentile(graph_lat, 95), "s",
                   "Graph change notification POSTed to /webhooks/graph -> record on the platform")
            report("calendar.push.duplicates", dups, "", "platform records sharing a (uid, recurrence_id) after the "
                                                         "shared meetings' two cycles (goal 0)")
            report("calendar.baseline.poll_only_mean_s", poll / 2, "s",
                   f"no push: mean wait for the poll timer ({poll:,.0f} s); "
                   f"{(poll / 2) / statistics.median(every):,.0f}x the push p50")
            c = waker.counters
            report("calendar.push.webhook_signals_sent", getattr(c, "signals_sent", 0), "",
                   f"accepted={getattr(c, 'accepted', 0)}")
    finally:
        await waker.aclose()
        hooks.stop()
        gserver.stop()
        mserver.stop()
        await env.shutdown()
