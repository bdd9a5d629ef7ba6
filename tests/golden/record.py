"""Record golden workflow histories with the code of this checkout.

Run by hand when a release is cut (`python -m tests.golden.record`), never by the
suite: the files it writes are what the *next* release's workflow code must replay
(tests/test_replay_golden.py). Mailbox workflows live for months, so a deploy meets
histories written by older code; a change that breaks their replay must sit behind
`workflow.patched`.

Each scenario drives the real workflow on a dev server through the paths whose
commands differ: every signal, a failing cycle, needs-reauth and reconnect,
continue-as-new, and disconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from store import repo
from tests.e2e_rig import Rig, throwaway_keyring
from workers import client as api
from workers.devstack import find_temporal_cli, search_attribute_args
from workers.scenario import build_scenario
from workers.temporal_client import DATA_CONVERTER, TASK_QUEUE
from workers.worker import build_activities, make_worker

HERE = Path(__file__).parent


async def _env(extra: list[str] | None = None) -> WorkflowEnvironment:
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_temporal_cli(), data_converter=DATA_CONVERTER,
        dev_server_extra_args=["--log-level", "error", *search_attribute_args(), *(extra or [])],
    )


async def _history(env, cid: str) -> dict:
    handle = env.client.get_workflow_handle(f"mailbox-sync/{cid}")
    return (await handle.fetch_history()).to_json_dict()


async def every_signal(tmp: Path, provider: str) -> dict:
    """Cycles with edits, a manual conflict resolved, pause/resume, retry of the
    quarantine, mass-delete approval, a cycle whose activity fails, needs-reauth
    then reconnected, and a final disconnect."""
    env = await _env()
    urls = f"sqlite:///{tmp / 'store.db'}", f"sqlite:///{tmp / 'crm.db'}"
    sc = build_scenario(*urls, provider=provider, connection_id=f"golden-{provider}-{uuid.uuid4().hex[:6]}",
                        settings={"policy": "manual", "fix_rules": ["normalize_phones"]})
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    try:
        async with make_worker(env.client, build_activities(*urls, keyring=throwaway_keyring()), task_queue=tq):
            r = Rig(env, sc, tq)
            await r.start()
            links = r.links()
            mids = [m for m in sc.resource_names if m in links]
            sc.mailbox.edit(mids[0], company="Initech")
            sc.crm.user_edit(sc.org_id, links[mids[0]], company="Initrode", enforce_rules=False)
            sc.mailbox.edit(mids[1], job_title="CFO")
            st = await r.cycle()
            with sc.sessions() as s:
                conflicts = [int(x.id) for x in repo.open_reviews(s, sc.connection_id, kind="conflict")]
            if conflicts:
                await api.resolve(env.client, sc.sessions, sc.connection_id, conflicts[0], "mailbox")
                st = await r.wait_cycles(st.cycles + 1)
            await api.pause(env.client, sc.connection_id)
            await asyncio.sleep(0.5)
            await api.resume(env.client, sc.connection_id)
            st = await r.wait_cycles(st.cycles + 1)
            await api.retry_quarantined(env.client, sc.connection_id)
            st = await r.wait_cycles(st.cycles + 1)
            await api.approve_mass_delete(env.client, sc.connection_id)
            st = await r.wait_cycles(st.cycles + 1)
            # A cycle that fails: the connection row is gone, so the fetch is Fatal;
            # an approval sent with it is consumed by that cycle.
            with sc.sessions.begin() as s:
                row = repo.get_connection(s, sc.connection_id)
                saved = dict(row._mapping)
                s.execute(repo.connections.delete().where(repo.connections.c.id == sc.connection_id))
            await api.approve_mass_delete(env.client, sc.connection_id)
            st = await r.wait_cycles(st.cycles + 1)
            assert st.last_error, "the failing cycle must show"
            with sc.sessions.begin() as s:
                s.execute(repo.connections.insert().values(**saved))
            st = await r.cycle()
            if provider == "microsoft":
                sc.mailbox.fail_listing(403, count=1)  # consent withdrawn -> needs re-auth
                st = await r.cycle()
                assert st.health == "needs_reauth", st
                await env.client.get_workflow_handle(f"mailbox-sync/{sc.connection_id}").signal("reconnected")
                st = await r.wait_cycles(st.cycles + 1)
            await api.disconnect(env.client, sc.connection_id)
            handle = env.client.get_workflow_handle(f"mailbox-sync/{sc.connection_id}")
            await handle.result()
            return await _history(env, sc.connection_id)
    finally:
        sc.close()
        await env.shutdown()


async def continue_as_new(tmp: Path) -> dict:
    """Several cycles across continue-as-new (low history limit), a pause across it."""
    env = await _env(["--dynamic-config-value", "limit.historyCount.suggestContinueAsNew=40"])
    urls = f"sqlite:///{tmp / 'store2.db'}", f"sqlite:///{tmp / 'crm2.db'}"
    sc = build_scenario(*urls, connection_id=f"golden-can-{uuid.uuid4().hex[:6]}")
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    try:
        async with make_worker(env.client, build_activities(*urls, keyring=throwaway_keyring()), task_queue=tq):
            r = Rig(env, sc, tq)
            await r.start()
            links = r.links()
            mids = [m for m in sc.resource_names if m in links]
            handle = env.client.get_workflow_handle(f"mailbox-sync/{sc.connection_id}")
            first_run = (await handle.describe()).run_id
            for i in range(3):
                sc.mailbox.edit(mids[i], company=f"Round {i}")
                await r.cycle()
            # The first run ended with continue-as-new: that run's history is the golden one.
            first = await env.client.get_workflow_handle(
                f"mailbox-sync/{sc.connection_id}", run_id=first_run).fetch_history()
            return first.to_json_dict()
    finally:
        sc.close()
        await env.shutdown()


async def org_workflow(tmp: Path) -> dict:
    """The organisation's workflow: started with its first mailbox, woken by the platform,
    reading the feed, waking the mailbox a change concerns, and a wake that finds nothing."""
    env = await _env()
    urls = f"sqlite:///{tmp / 'store3.db'}", f"sqlite:///{tmp / 'crm3.db'}"
    sc = build_scenario(*urls, connection_id=f"golden-org-{uuid.uuid4().hex[:6]}",
                        org_id=f"golden-org-{uuid.uuid4().hex[:6]}")
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    try:
        async with make_worker(env.client, build_activities(*urls, keyring=throwaway_keyring()), task_queue=tq):
            r = Rig(env, sc, tq)
            await r.start()
            links = r.links()
            mid = next(m for m in sc.resource_names if m in links)
            sc.crm.user_edit(sc.org_id, links[mid], job_title="Golden", enforce_rules=False)
            await r.cycle()  # the read wakes the mailbox
            await r.cycle()  # nothing new
            handle = env.client.get_workflow_handle(f"org-sync/{sc.org_id}")
            return (await handle.fetch_history()).to_json_dict()
    finally:
        sc.close()
        await env.shutdown()


async def mail_logging(tmp: Path) -> dict:
    """A mailbox syncing mail (kinds ["mail"]) through the demo's stages: shared thread,
    an association review answered by signal, a label added later, a lead conversion
    read by the organisation's workflow. Returns Ann's mailbox history."""
    from workers.mail_demo import MailStages
    from workers.mail_scenario import MailScenario

    env = await _env()
    urls = f"sqlite:///{tmp / 'store4.db'}", f"sqlite:///{tmp / 'crm4.db'}"
    sc = MailScenario(*urls)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    try:
        async with make_worker(env.client, build_activities(*urls, keyring=throwaway_keyring()), task_queue=tq):
            await MailStages(env.client, sc, lambda _line: None, task_queue=tq, poll_interval_s=3600).run()
            handle = env.client.get_workflow_handle(f"mailbox-sync/{sc.connections['ann']}")
            return (await handle.fetch_history()).to_json_dict()
    finally:
        sc.close()
        await env.shutdown()


async def calendar_sync(tmp: Path) -> dict:
    """A calendar syncing (kinds ["calendar"]) through the demo's stages: a series with
    exceptions, a meeting on three calendars, a platform event, rules, and a time conflict
    answered by the resolve signal. Returns Ann's calendar's history."""
    from workers.calendar_demo import CalendarStages
    from workers.calendar_scenario import CalendarScenario

    env = await _env()
    urls = f"sqlite:///{tmp / 'store5.db'}", f"sqlite:///{tmp / 'crm5.db'}"
    sc = CalendarScenario(*urls)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    try:
        async with make_worker(env.client, build_activities(*urls, keyring=throwaway_keyring()), task_queue=tq):
            await CalendarStages(env.client, sc, lambda _line: None, task_queue=tq, poll_interval_s=3600).run()
            handle = env.client.get_workflow_handle(f"mailbox-sync/{sc.connections['ann']}")
            return (await handle.fetch_history()).to_json_dict()
    finally:
        sc.close()
        await env.shutdown()


async def main_async(out: Path, release: str, only: list[str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for sub in ("g", "m"):
            (tmp / sub).mkdir()
        scenarios = {
            "google_every_signal": lambda: every_signal(tmp / "g", "google"),
            "microsoft_every_signal": lambda: every_signal(tmp / "m", "microsoft"),
            "continue_as_new": lambda: continue_as_new(tmp),
            "org_workflow": lambda: org_workflow(tmp),
            "mail_logging": lambda: mail_logging(tmp),
            "calendar_sync": lambda: calendar_sync(tmp),
        }
        unknown = sorted(set(only or ()) - set(scenarios))
        if unknown:
            raise SystemExit(f"unknown scenario {', '.join(unknown)} (known: {', '.join(scenarios)})")
        recorded = {name: await run() for name, run in scenarios.items() if not only or name in only}
    for name, doc in recorded.items():
        path = out / f"{release}__{name}.json"
        path.write_text(json.dumps(doc, sort_keys=True) + "\n")
        print(f"wrote {path} ({path.stat().st_size} bytes, {len(doc['events'])} events)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("release", help="a name for the code that recorded them, e.g. the short commit")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--only", action="append", metavar="SCENARIO", help="record this scenario only (repeatable)")
    args = p.parse_args(argv)
    asyncio.run(main_async(args.out, args.release, args.only))


if __name__ == "__main__":
    sys.exit(main())
