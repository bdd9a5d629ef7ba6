"""`make demo`: the main job on the embedded default, end to end, in one command.

Starts (or reuses) the Temporal dev server with its state in .concord/temporal.db,
a worker in this process, the SQLite store, the Google People emulator with a
seeded mailbox and the reference CRM with seeded records; connects the mailbox,
runs sync cycles both ways and prints what happened per stage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from urllib.parse import quote

from temporalio.client import WorkflowExecutionStatus

from emulators.server import PortBusy
from models.workflow import SyncState
from workers import client as api
from workers.devstack import DevServer
from emulators.people_data import make_people
from workers.scenario import build_scenario, connect_mailbox, make_mailbox
from workers.telemetry import setup_tracing
from workers.temporal_client import connect
from workers.worker import build_activities, make_worker
from workflows.mailbox_sync import workflow_id

STATE_DIR = Path(".concord")
CONNECTION = "demo-google-1"
MS_CONNECTION = "demo-microsoft-1"


def say(msg: str = "") -> None:
    print(msg, flush=True)


def print_cycle(title: str, st: SyncState) -> None:
    c = st.last_counts
    say(f"\n== {title} (cycle {st.cycles}, health: {st.health})")
    say(f"   fetched      {c.fetched:5d}   changes read from the mailbox and the CRM")
    say(f"   linked       {c.linked:5d}   pairs joined (similar records or new records created)")
    say(f"   created      {c.created:5d}   records created on the other side")
    say(f"   updated      {c.updated:5d}   records updated after a merge")
    say(f"   deleted      {c.deleted:5d}")
    say(f"   skipped      {c.skipped:5d}   by a named rule (own write echoing back, out of scope, ...)")
    say(f"   conflicts    {c.conflicts:5d}   waiting for a person (manual policy)")
    say(f"   duplicates   {c.duplicates:5d}   possible duplicates waiting for review")
    say(f"   quarantined  {c.quarantined:5d}   refused by a validation rule or malformed, with their error")
    s = st.store
    say(f"   store: {s.links} links; items {dict((k, v) for k, v in s.items.items() if v)}")
    if s.quarantined:
        codes: dict[str, int] = {}
        for q in s.quarantined:
            codes[q.error_code] = codes.get(q.error_code, 0) + 1
        say(f"   quarantine by error: {codes}")


async def wait_for(client, cid: str, cycles: int, timeout: float = 120) -> SyncState:
    try:
        return await api.wait_for_cycles(client, cid, cycles, timeout=timeout, interval=0.3)
    except TimeoutError as exc:
        raise SystemExit(f"{exc}; see the Temporal UI") from None


async def run(port: int, fresh: bool) -> None:
    STATE_DIR.mkdir(exist_ok=True)
    os.environ.setdefault("CONCORD_OTEL_EXPORTER", "console")
    os.environ.setdefault("CONCORD_OTEL_FILE", str(STATE_DIR / "spans.jsonl"))
    setup_tracing("concord-demo")
    store_url = f"sqlite:///{STATE_DIR / 'store.db'}"
    crm_url = f"sqlite:///{STATE_DIR / 'crm.db'}"
    if fresh:
        for name in ("store.db", "crm.db"):
            for suffix in ("", "-wal", "-shm"):
                p = STATE_DIR / (name + suffix)
                if p.exists():
                    p.unlink()

    dev = DevServer(port=port, db_path=STATE_DIR / "temporal.db", announce=lambda m: say(f"-- {m}"))
    dev.start()
    try:
        say(f"-- Temporal dev server at {dev.target}, UI at {dev.ui_url}")
        client = await connect(dev.target)
        # A previous demo run's workflows would point at emulators that are gone.
        for cid in (CONNECTION, MS_CONNECTION):
            old = client.get_workflow_handle(workflow_id(cid))
            try:
                if (await old.describe()).status == WorkflowExecutionStatus.RUNNING:
                    await old.terminate("a new demo run starts")
            except Exception:
                pass

        sc = build_scenario(store_url, crm_url, connection_id=CONNECTION, n_mailbox=30, n_crm=40,
                            settings={"policy": "manual", "fix_rules": ["normalize_phones"]})
        say(f"-- Google People emulator at {sc.emulator.base_url} with {len(sc.resource_names) + 1} contacts "
            f"(one with a malformed address)")
        say(f"-- reference CRM with {len(sc.crm_seed.contact_ids)} contacts "
            f"({len(sc.crm_seed.near_duplicates)} near-duplicates of mailbox contacts, one breaking rule "
            f"'{sc.crm_seed.invalid_rule}')")
        acts = build_activities(store_url, crm_url)
        async with make_worker(client, acts):
            await api.start_sync(client, CONNECTION, sc.org_id, "google", poll_interval_s=600)
            st = await wait_for(client, CONNECTION, 1)
            print_cycle("initial two-way sync", st)

            # Changes on both sides: a Gmail edit, a CRM edit, a conflicting edit of one
            # pair on both sides, a deletion in Gmail.
            names = sc.resource_names
            from store import repo
            with sc.sessions() as s:
                linked = repo.get_links_by_mailbox_ids(s, CONNECTION, names)
            pairs = [n for n in names if n in linked]
            sc.mailbox.edit(pairs[0], company="Globex", job_title="CFO")           # edited in Gmail
            sc.mailbox.edit(pairs[1], company="Initech")                           # edited on both sides:
            sc.crm.user_edit(sc.org_id, linked[pairs[1]].platform_id, company="Initrode",
                             enforce_rules=False)                                  # a conflict (manual policy)
            sc.crm.user_edit(sc.org_id, linked[pairs[2]].platform_id, job_title="VP Sales",
                             enforce_rules=False)                                  # edited in the CRM
            sc.mailbox.delete(pairs[3])                                            # deleted in Gmail
            await api.wake(client, CONNECTION, "demo-edits")
            st = await wait_for(client, CONNECTION, 2)
            print_cycle("incremental cycle after edits on both sides", st)

            if st.store.open_conflicts:
                review = st.store.open_conflicts[0]
                say(f"\n-- resolving conflict review {review} for the mailbox side (signal 'resolve')")
                await api.resolve(client, sc.sessions, CONNECTION, review, "mailbox")
                st = await wait_for(client, CONNECTION, 3)
                print_cycle("after the manual resolution", st)

            # A colleague connects a Microsoft 365 mailbox in the same organisation: the
            # person both know stays one CRM record.
            ms = make_mailbox("microsoft")
            shared = sc.mailbox_contacts[names.index(pairs[4])]
            ms_ids = ms.seed([shared.model_copy(update={"emails": tuple(e.upper() for e in shared.emails)}),
                              *make_people(5, seed=99)])
            connect_mailbox(sc.sessions, org_id=sc.org_id, connection_id=MS_CONNECTION, user_id="user_2", mailbox=ms)
            await api.start_sync(client, MS_CONNECTION, sc.org_id, "microsoft", poll_interval_s=600)
            st = await wait_for(client, MS_CONNECTION, 1)
            print_cycle("Microsoft 365 mailbox of user_2, same organisation", st)
            with sc.sessions() as s:
                ms_link = repo.get_links_by_mailbox_ids(s, MS_CONNECTION, [ms_ids[0]])
            if ms_link and ms_link[ms_ids[0]].platform_id == linked[pairs[4]].platform_id:
                say("   the person both mailboxes know is one CRM record "
                    f"({linked[pairs[4]].platform_id}), linked from Gmail and from Outlook")
            ms.server.stop()

        say("\nLook at it in the Temporal UI:")
        say(f"   {dev.ui_url}/namespaces/default/workflows/{quote(workflow_id(CONNECTION), safe='')}")
        say(f"   {dev.ui_url}/namespaces/default/workflows/{quote(workflow_id(MS_CONNECTION), safe='')}")
        say(f"   filter: ConcordOrgId = '{sc.org_id}'   (search attributes: ConcordOrgId, ConcordProvider, ConcordStatus)")
        say(f"Spans (OpenTelemetry console exporter): {STATE_DIR / 'spans.jsonl'}")
        say("The workflow keeps running on the server; its worker stopped with this demo. "
            "Run `make demo` again to start over.")
        sc.close()
    finally:
        dev.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Concord demo on the embedded default")
    parser.add_argument("--port", type=int, default=int(os.environ.get("CONCORD_TEMPORAL_PORT", "7233")))
    parser.add_argument("--keep", action="store_true", help="keep the store and CRM of the previous run")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args.port, fresh=not args.keep))
    except PortBusy as exc:
        sys.exit(f"demo: {exc}; set CONCORD_TEMPORAL_PORT or pass --port")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
