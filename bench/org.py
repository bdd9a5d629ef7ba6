"""The platform read once per organisation: what one platform change costs.

One organisation, 50 mailboxes (each user owns a share of the records, the default
"owned" scope) and 10,000 records in the reference CRM. A CRM user edits records one
at a time; after each edit the platform's webhook fires. Measured in the same run:

- Concord now: the organisation's reader reads the feed once (activities/org.py),
  mirrors and numbers the change, and wakes only the mailboxes it concerns; each of
  those pulls its share from the store (`contacts.fetch_platform`, no platform call).
- The baseline, as it was before: the webhook woke every mailbox of the organisation,
  and each read the whole feed with a cursor of its own and dropped what was not its
  business: one feed read per mailbox per change.

Also a burst (a CRM import: many changes behind one webhook) and the cost of a
mailbox's first load of its scope from the mirror. Real store and CRM databases
(SQLite files, or PostgreSQL with --pg), the real activities' code; no Temporal
(the workflow only sequences these calls).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

from activities.org import OrgReader
from activities.pipeline import KindPipeline
from models.contact import Contact
from models.workflow import CycleRef
from platforms.reference_crm import ReferenceCrm, ReferenceCrmContacts
from store import repo
from store.db import make_engine, migrate, session_factory
from sync.kinds.contacts import CONTACTS

ORG = "org_bench_org"
SEED = 11


def _person(i: int) -> Contact:
    return Contact(given_name=f"Given{i}", family_name=f"Family{i % 997}", emails=(f"p{i}@co{i % 300}.example",),
                   company=f"Company {i % 300}")


def _pg_urls() -> tuple[str, str]:
    import psycopg

    names = []
    for what in ("store", "crm"):
        name = f"bench_org_{what}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        names.append(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    return names[0], names[1]


def run(report: Callable, *, mailboxes: int = 50, records: int = 10_000, changes: int = 50, burst: int = 500,
        pg: bool = False, say: Callable[[str], None] = print) -> None:
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="concord-bench-org-") as tmp:
        if pg:
            store_url, crm_url = _pg_urls()
        else:
            store_url, crm_url = f"sqlite:///{Path(tmp) / 'store.db'}", f"sqlite:///{Path(tmp) / 'crm.db'}"
        users = [f"user_{i}" for i in range(mailboxes)]
        crm = ReferenceCrm(crm_url)
        t0 = time.perf_counter()
        ids = [crm.create_contact(ORG, _person(i), owner_id=users[i % mailboxes], actor="seed",
                                  enforce_rules=False).id for i in range(records)]
        say(f"seeded {records:,} CRM records in {time.perf_counter() - t0:.1f}s")
        migrate(store_url)
        sessions = session_factory(make_engine(store_url))
        cids = [f"conn-{i}" for i in range(mailboxes)]
        with sessions.begin() as s:
            repo.create_org(s, ORG, "Bench organisation", {})
            for cid, user in zip(cids, users):
                repo.create_connection(s, id=cid, org_id=ORG, user_id=user, provider="google",
                                       account_ref=f"acct-{cid}")
        platform = ReferenceCrmContacts(crm)
        # A new reader and pipeline per activity in the worker; their state is the store's.
        reader = OrgReader(sessions, CONTACTS, platform)
        pipeline = KindPipeline(sessions, CONTACTS, platform, lambda info: None)
        cycle_no = iter(range(1, 10**9))

        def pull(cid: str):
            return pipeline.fetch_platform(CycleRef(connection_id=cid, cycle_id=f"b{next(cycle_no)}"))

        report("org.mailboxes", mailboxes, "")
        report("org.platform_records", records, "records")

        # The organisation's first read, then each mailbox's first load (from the mirror).
        t0 = time.perf_counter()
        calls0 = platform.calls_made
        first = reader.read(ORG)
        report("org.initial_read_s", time.perf_counter() - t0, "s", f"{first.changes:,} records mirrored")
        report("org.initial_read_calls", platform.calls_made - calls0, "calls", f"{first.pages} feed pages")
        t0 = time.perf_counter()
        calls0 = platform.calls_made
        loaded = sum(pull(cid).fetched for cid in cids)
        report("org.first_load_s", time.perf_counter() - t0, "s", f"{mailboxes} mailboxes, {loaded:,} records staged")
        report("org.first_load_platform_calls", platform.calls_made - calls0, "calls", "content from the buffer")

        # The baseline's cursors: one per mailbox, at the feed's head.
        head = platform.changes_since(ORG, None, limit=records + 1)
        while head.records and head.cursor:
            nxt = platform.changes_since(ORG, head.cursor, limit=records + 1)
            if not nxt.records:
                break
            head = nxt
        base_cursors = {cid: head.cursor for cid in cids}

        ours_calls, ours_woken, ours_s, base_calls, base_woken, base_s = [], [], [], [], [], []
        delivered_ok = 0
        for n in range(changes):
            i = rng.randrange(records)
            crm.user_edit(ORG, ids[i], job_title=f"Edit {n}", enforce_rules=False)
            owner_cid = cids[i % mailboxes]
            # Concord: one read, then only the concerned mailboxes pull.
            t0 = time.perf_counter()
            calls0 = platform.calls_made
            read = reader.read(ORG)
            pulled = {cid: pull(cid).fetched for cid in sorted(read.affected)}
            ours_s.append(time.perf_counter() - t0)
            ours_calls.append(platform.calls_made - calls0)
            ours_woken.append(len(read.affected))
            delivered_ok += pulled == {owner_cid: 1}
            # Baseline: every mailbox woken, each reads the feed past its own cursor.
            t0 = time.perf_counter()
            calls0 = platform.calls_made
            for cid, user in zip(cids, users):
                page = platform.changes_since(ORG, base_cursors[cid], limit=500)
                _mine = [r for r in page.records if r.owner == user]
                base_cursors[cid] = page.cursor or base_cursors[cid]
            base_s.append(time.perf_counter() - t0)
            base_calls.append(platform.calls_made - calls0)
            base_woken.append(mailboxes)

        per = statistics.mean
        report("org.reads_per_change", per(ours_calls), "calls", f"goal 1; baseline {per(base_calls):.0f}")
        report("org.baseline_reads_per_change", per(base_calls), "calls", "each mailbox reads the feed itself")
        report("org.reads_ratio", per(base_calls) / max(per(ours_calls), 1e-9), "x", "baseline / Concord")
        report("org.woken_per_change", per(ours_woken), "mailboxes", "only those whose records changed")
        report("org.baseline_woken_per_change", per(base_woken), "mailboxes", "one webhook woke every mailbox")
        report("org.delivered_to_owner_only", delivered_ok, f"of {changes}", "the owner's mailbox pulled exactly 1")
        report("org.change_p50_s", statistics.median(ours_s), "s", "read + the woken mailboxes' pulls")
        report("org.baseline_change_p50_s", statistics.median(base_s), "s",
               f"{mailboxes} feed reads of an in-process CRM (~1 ms each; a real platform: an HTTP round trip)")
        report("org.change_time_ratio", statistics.median(base_s) / statistics.median(ours_s), "x",
               "baseline / Concord")

        # A burst: a CRM import edits many records behind one webhook.
        picked = rng.sample(range(records), min(burst, records))
        for n, i in enumerate(picked):
            crm.user_edit(ORG, ids[i], job_title=f"Import {n}", enforce_rules=False)
        t0 = time.perf_counter()
        calls0 = platform.calls_made
        read = reader.read(ORG)
        fetched = sum(pull(cid).fetched for cid in sorted(read.affected))
        report("org.burst_changes", read.changes, "changes")
        report("org.burst_read_calls", platform.calls_made - calls0, "calls", f"{read.pages} feed pages, once")
        report("org.burst_woken", len(read.affected), "mailboxes", f"of {mailboxes}")
        report("org.burst_delivered", fetched, "records", "pulled by the woken mailboxes")
        report("org.burst_s", time.perf_counter() - t0, "s")
        crm.engine.dispose()
