"""`make demo`: the main job on the embedded default, end to end, in one command.

Starts (or reuses) the Temporal dev server with its state in .concord/temporal.db,
a worker in this process, the SQLite store, the Google People emulator with a
seeded mailbox and the reference CRM with seeded records; connects the mailbox,
runs sync cycles both ways and prints what happened per stage and what waits for
a person. Then the whole stack (dev server and UI, worker, emulators, the HTTP
app with the webhooks) keeps running until Ctrl-C, so the printed `concord`
commands can be tried on it; `--once` stops after the scenario (CI).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

import settings
from api.app import build_webhooks, create_app
from api.webhooks import derived_platform_secrets, lazy_temporal_signal, platform_headers, temporal_org_signal
from models.errors import Fatal
from emulators.people_data import make_people
from emulators.server import PortBusy, RunningServer, serve
from models.workflow import SyncState, allowed_answers
from store.vault import KeyRing, generate_key
from workers import client as api
from workers.cli import default_store_url, default_temporal, exit_process
from workers.devstack import DevServer
from workers.calendar_demo import CalendarStages
from workers.calendar_scenario import CalendarScenario
from workers.mail_demo import MailStages
from workers.mail_scenario import MailScenario
from workers.scenario import MailboxDriver, Scenario, build_scenario, connect_mailbox, make_mailbox
from telemetry import setup_tracing
from workers.temporal_client import TASK_QUEUE, connect
from workers.worker import build_activities, make_worker
from workflows.mailbox_sync import workflow_id
from workflows.org_sync import workflow_id as org_workflow_id

STATE_DIR = Path(".concord")
CONNECTION = "demo-google-1"
DEMO_ORG = "org_demo"
MS_CONNECTION = "demo-microsoft-1"
#: the email-logging stages run in an organisation of their own, four mailboxes
MAIL_ORG = "org_mail_demo"
MAIL_PREFIX = "demo-mail"
MAIL_USERS = ("ann", "bob", "cy", "dee")
#: the calendar stages: an organisation of their own, Ann and Cy on Google Calendar
CALENDAR_ORG = "org_calendar_demo"
CALENDAR_PREFIX = "demo-cal"
CALENDAR_USERS = ("ann", "cy")
#: How long a previous run's workflow may take to stop once cancelled.
CANCEL_WAIT_S = 10.0
#: The body of the platform webhook the demo suggests trying (a CRM change).
WEBHOOK_BODY = '{"record_ids": ["demo"]}'
#: Reviews and quarantined items listed per connection; the rest are one command away.
SHOW_AT_MOST = 10


def say(msg: str = "") -> None:
    print(msg, flush=True)


# --- development secrets -------------------------------------------------------------

def dev_secret(path: Path, make: Callable[[], str]) -> str:
    """A development secret kept beside the demo's state: made once (mode 0600), reused after,
    so what a run sealed is readable by the next. Production takes its keys from the
    environment and refuses to start without them."""
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    value = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another run made it meanwhile
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(value + "\n")
    return value


def dev_keyring(state_dir: Path) -> KeyRing:
    return KeyRing.parse(dev_secret(state_dir / "vault.keys", lambda: f"demo:{generate_key()}"))


def dev_admin_token(state_dir: Path) -> str:
    return dev_secret(state_dir / "admin.token", lambda: secrets.token_urlsafe(24))


def dev_webhook_key(state_dir: Path) -> bytes:
    return bytes.fromhex(dev_secret(state_dir / "platform-webhook.key", lambda: secrets.token_hex(32)))


# --- what the demo prints --------------------------------------------------------------

def print_cycle(title: str, st: SyncState) -> None:
    c, s = st.last_counts, st.store
    in_quarantine = s.items.get("quarantined", 0)
    say(f"\n== {title} (cycle {st.cycles}, health: {st.health})")
    say(f"   fetched      {c.fetched:5d}   changes read from the mailbox and the CRM")
    say(f"   linked       {c.linked:5d}   pairs joined (similar records or new records created)")
    say(f"   created      {c.created:5d}   records created on the other side")
    say(f"   updated      {c.updated:5d}   records updated after a merge")
    say(f"   deleted      {c.deleted:5d}")
    say(f"   skipped      {c.skipped:5d}   by a named rule (own write echoing back, out of scope, ...)")
    say(f"   conflicts    {c.conflicts:5d}   new this cycle; {s.open_conflict_count} open in all, "
        "waiting for a person (manual policy)")
    say(f"   duplicates   {c.duplicates:5d}   new this cycle; {s.open_duplicate_count} open in all, "
        "possible duplicates waiting for review")
    say(f"   fixed        {c.fixed:5d}   validation errors fixed by a named rule, then written")
    say(f"   deferred     {c.deferred:5d}   held by the mass-delete guard (`concord approve-deletes`) "
        "or re-read after a stale etag")
    say(f"   quarantined  {c.quarantined:5d}   this cycle; {in_quarantine} in quarantine in all, "
        "refused by a validation rule or malformed, with their error")
    say(f"   store: {s.links} links; records (mailbox and CRM sides) by status "
        f"{dict((k, v) for k, v in s.items.items() if v)}")
    if s.quarantined:
        codes: dict[str, int] = {}
        for q in s.quarantined:
            codes[q.error_code] = codes.get(q.error_code, 0) + 1
        say(f"   quarantine by error: {codes}")


def _shown(value, width: int = 30) -> str:
    if isinstance(value, (list, tuple)):
        value = "; ".join(str(v) for v in value)
    text = str(value) if value not in (None, "") else "(empty)"
    return text if len(text) <= width else text[: width - 1] + "…"


def _row(first: str, cells: list[str]) -> str:
    return ("      " + f"{first:<13}" + "".join(f"{cell:<32}" for cell in cells)).rstrip()


def print_waiting(sessions, connection_id: str) -> None:
    """Each open review with the values a person chooses between, and each quarantined item."""
    reviews = api.open_reviews(sessions, connection_id)
    held = api.quarantined(sessions, connection_id)
    say(f"\n== waiting for a person on {connection_id}: {len(reviews)} open reviews, {len(held)} quarantined")
    for r in reviews[:SHOW_AT_MOST]:
        d = r["detail"]
        answers = " | ".join(allowed_answers(r["kind"], d.get("rule")))
        if r["kind"] == "conflict":
            say(f"   review {r['review_id']}: conflict between mailbox {r['mailbox_id']} and CRM {r['platform_id']} "
                f"(answer {answers})")
            sides = [("mailbox", d.get("mailbox")), ("CRM", d.get("platform")), ("last synced", d.get("base"))]
            say(_row("field", [label for label, _ in sides]))
            missing = "(first link: none)" if d.get("first_link") else "(not recorded)"
            for field in r["fields"]:
                say(_row(field, [_shown(snap.get(field)) if snap is not None else missing
                                 for _, snap in sides]))
        else:
            record = f"mailbox {r['mailbox_id']}" if r["mailbox_id"] else f"CRM {r['platform_id']}"
            candidate = f"{'CRM' if d.get('candidate_side') == 'platform' else 'mailbox'} {d.get('candidate_id')}"
            meaning = {"link": "link = the same person", "create": "create = a different one", "ignore": "ignore"}
            say(f"   review {r['review_id']}: possible duplicate: {record} looks like {candidate} "
                f"(score {d.get('score')}; answer {', '.join(meaning[a] for a in allowed_answers('duplicate', d.get('rule')))})")
    if len(reviews) > SHOW_AT_MOST:
        say(f"   ... and {len(reviews) - SHOW_AT_MOST} more reviews (`concord reviews {connection_id}`)")
    for q in held[:SHOW_AT_MOST]:
        say(f"   quarantined item {q['item_id']} ({q['side']} {q['external_id']}): "
            f"{q['error_message'] or q['error_code']}")
    if len(held) > SHOW_AT_MOST:
        say(f"   ... and {len(held) - SHOW_AT_MOST} more quarantined (`concord quarantine {connection_id}`)")


def concord(*words: str, temporal: str, store_url: str | None = None) -> str:
    """A `concord` command line a newcomer can paste from the repository root."""
    exe = Path(sys.executable).with_name("concord")
    try:
        exe = exe.relative_to(Path.cwd())
    except ValueError:
        pass
    argv = [str(exe)]
    if temporal != default_temporal():
        argv += ["--temporal", temporal]
    argv += words
    if store_url is not None and store_url != default_store_url():
        argv += ["--store-url", store_url]
    return shlex.join(argv)


def print_stack(dev: DevServer, app: RunningServer, mailboxes: dict[str, MailboxDriver], sc: Scenario,
                store_url: str, crm_url: str, webhook_key: bytes, mail_sc: MailScenario | None = None,
                cal_sc: CalendarScenario | None = None) -> None:
    hooks = app.base_url.rstrip("/") + "/webhooks"
    say("\nThe stack keeps running until Ctrl-C:")
    say(f"   Temporal dev server  {dev.target}   UI {dev.ui_url}"
        + ("  (someone else's server, reused: it stays up)" if dev.reused else ""))
    say(f"   worker               in this process, task queue {TASK_QUEUE}")
    say(f"   HTTP app (webhooks)  {hooks}/...")
    for cid, mailbox in mailboxes.items():
        say(f"   {mailbox.provider:<9} emulator   {mailbox.server.base_url}  (connection {cid})")
    if mail_sc is not None:
        say(f"   Gmail emulator       {mail_sc.servers[0].base_url}  (Ann, Cy)")
        for server, who in zip(mail_sc.servers[1:], [w for w, p in mail_sc.people.items() if p.provider != "google"]):
            say(f"   Graph emulator       {server.base_url}  ({who.capitalize()})")
    if cal_sc is not None:
        say(f"   Calendar emulator    {cal_sc.servers[0].base_url}  (Ann, Cy: Google Calendar)")
    say(f"   store {store_url}, CRM {crm_url}")
    say("\nIn the Temporal UI:")
    for cid in mailboxes:
        say(f"   {dev.ui_url}/namespaces/default/workflows/{quote(workflow_id(cid), safe='')}")
    say(f"   filter: ConcordOrgId = '{sc.org_id}'   (search attributes: ConcordOrgId, ConcordProvider, ConcordStatus)")
    if mail_sc is not None:
        say(f"   {dev.ui_url}/namespaces/default/workflows/"
            f"{quote(workflow_id(mail_sc.connections['ann']), safe='')}  (email logging and send)")
        say(f"   email logging: ConcordOrgId = '{mail_sc.org_id}'  (each mailbox's state query has a 'mail' section)")
    if cal_sc is not None:
        say(f"   calendar: ConcordOrgId = '{cal_sc.org_id}'  (each calendar's state query has a 'calendar' section)")

    t = dev.target
    say("\nTry, in another terminal in this directory:")
    for cid in mailboxes:
        say(f"   {concord('state', cid, temporal=t)}")
        say(f"   {concord('reviews', cid, temporal=t, store_url=store_url)}")
        say(f"   {concord('quarantine', cid, temporal=t, store_url=store_url)}")
        example = _example_answer(sc.sessions, cid)
        if example:
            say(f"   {concord('resolve', cid, *example, temporal=t, store_url=store_url)}")
    headers = platform_headers(derived_platform_secrets(webhook_key)(sc.org_id), WEBHOOK_BODY.encode())
    say(f"   {concord('org-state', sc.org_id, temporal=t)}")
    if mail_sc is not None:
        ann = mail_sc.connections["ann"]
        say("   # email logging and send: the state of a mailbox (its mail and send sections), what")
        say("   # waits for a person there, and the organisation's reads of the outbox and conversions:")
        say(f"   {concord('state', ann, temporal=t)}")
        say(f"   {concord('status', ann, '--json', temporal=t)}")
        say(f"   {concord('reviews', ann, temporal=t, store_url=store_url)}")
        say(f"   {concord('org-state', mail_sc.org_id, temporal=t)}")
    if cal_sc is not None:
        say("   # the calendar: Ann's calendar's state and what waits for a person there")
        say(f"   {concord('state', cal_sc.connections['ann'], temporal=t)}")
        say(f"   {concord('quarantine', cal_sc.connections['ann'], temporal=t, store_url=store_url)}")
    say("   # a CRM change arrives as a signed platform webhook: it wakes the organisation's workflow,")
    say("   # which reads the CRM once and wakes only the mailboxes whose records changed")
    say("   # (signed now: it is accepted once, within 5 minutes; replays are refused):")
    say("   " + shlex.join(["curl", "-s", "-X", "POST", f"{hooks}/platform/{sc.org_id}",
                            *[arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")],
                            "-H", "Content-Type: application/json", "-d", WEBHOOK_BODY]))
    say(f"   curl -s -H \"Authorization: Bearer $(cat {STATE_DIR / 'admin.token'})\" {hooks}/stats")
    say("Ctrl-C stops it all; `make demo` starts over (`--keep` keeps the store and the CRM).")


def _example_answer(sessions, connection_id: str) -> tuple[str, str] | None:
    """A real open review and an answer its kind takes."""
    for r in api.open_reviews(sessions, connection_id):
        return str(r["review_id"]), allowed_answers(r["kind"], r["detail"].get("rule"))[0]
    return None


# --- the run ------------------------------------------------------------------------------

async def wait_for(client, cid: str, cycles: int, timeout: float = 120) -> SyncState:
    try:
        return await api.wait_for_cycles(client, cid, cycles, timeout=timeout, interval=0.3)
    except TimeoutError as exc:
        raise Fatal(f"{exc}; see the Temporal UI") from None


async def settled(client, org_id: str, cid: str, after: int, timeout: float = 120) -> SyncState:
    """The mailbox's state once the organisation has read the platform and the mailbox has
    finished the cycles that woke it."""
    try:
        await api.wait_for_org_cycles(client, org_id, 1, timeout=timeout, interval=0.3)
        return await api.wait_settled(client, cid, after, timeout=timeout)
    except TimeoutError as exc:
        raise Fatal(f"{exc}; see the Temporal UI") from None


async def sync_now(client, org_id: str, cid: str, timeout: float = 120) -> SyncState:
    """What a CRM webhook and a mailbox push do together: the organisation reads the CRM
    (waking the mailbox if a change concerns it), and the mailbox cycles."""
    try:
        return await api.sync_now(client, org_id, cid, timeout=timeout)
    except TimeoutError as exc:
        raise Fatal(f"{exc}; see the Temporal UI") from None


async def cancel_previous_runs(client: Client) -> list[WorkflowHandle]:
    """A previous run's workflows point at emulators that are gone: ask them to stop (the
    workflow records that it stopped). Asked before this run's worker polls, so a wake-up
    or poll timer they kept while no worker ran is not served as a cycle first."""
    running = []
    mail = [workflow_id(f"{MAIL_PREFIX}-{who}") for who in MAIL_USERS] + [org_workflow_id(MAIL_ORG)]
    mail += [workflow_id(f"{CALENDAR_PREFIX}-{who}") for who in CALENDAR_USERS] + [org_workflow_id(CALENDAR_ORG)]
    for wid in (workflow_id(CONNECTION), workflow_id(MS_CONNECTION), org_workflow_id(DEMO_ORG), *mail):
        handle = client.get_workflow_handle(wid)
        try:
            if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:
                continue
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        await handle.cancel()
        running.append(handle)
    return running


async def wait_until_closed(handles: list[WorkflowHandle]) -> None:
    """Wait for cancelled runs to close (a worker must be polling); terminate one that does not."""
    await asyncio.gather(*(_closed(h) for h in handles))


async def _closed(handle: WorkflowHandle) -> None:
    try:
        await asyncio.wait_for(handle.result(), CANCEL_WAIT_S)
    except WorkflowFailureError:
        pass  # it ended cancelled: what was asked
    except asyncio.TimeoutError:
        await handle.terminate("did not stop within the demo's wait after a cancel")
        say(f"-- the previous run's {handle.id} did not stop on cancel in {CANCEL_WAIT_S:.0f}s; terminated it")
        return
    say(f"-- stopped the previous run's {handle.id} (cancelled)")


async def run(port: int, fresh: bool, once: bool) -> None:
    STATE_DIR.mkdir(exist_ok=True)
    # SIGTERM (`kill`) ends the run like Ctrl-C: through every `finally` below.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
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
    crm_kept = (STATE_DIR / "crm.db").exists()  # before the worker opens (and so creates) it
    keyring = dev_keyring(STATE_DIR)
    webhook_key = dev_webhook_key(STATE_DIR)

    dev = DevServer(port=port, db_path=STATE_DIR / "temporal.db", announce=lambda m: say(f"-- {m}"))
    await dev.astart()
    mailboxes: dict[str, MailboxDriver] = {}
    mail_sc: MailScenario | None = None
    cal_sc: CalendarScenario | None = None
    app: RunningServer | None = None
    try:
        say(f"-- Temporal dev server at {dev.target}, UI at {dev.ui_url}")
        client = await connect(dev.target)
        previous = await cancel_previous_runs(client)
        acts = build_activities(store_url, crm_url, keyring=keyring)
        async with make_worker(client, acts):
            await wait_until_closed(previous)
            sc = build_scenario(store_url, crm_url, org_id=DEMO_ORG, connection_id=CONNECTION, n_mailbox=30, n_crm=40,
                                settings={"policy": "manual", "fix_rules": ["normalize_phones"]},
                                seed_crm=not crm_kept)
            mailboxes[CONNECTION] = sc.mailbox
            say(f"-- Google People emulator at {sc.emulator.base_url} with {len(sc.resource_names) + 1} contacts "
                f"(one with a malformed address)")
            if crm_kept:
                say(f"-- reference CRM kept from the previous run ({len(sc.crm.list_contacts(sc.org_id))} contacts)")
            else:
                say(f"-- reference CRM with {len(sc.crm_seed.contact_ids)} contacts "
                    f"({len(sc.crm_seed.near_duplicates)} near-duplicates of mailbox contacts, one breaking rule "
                    f"'{sc.crm_seed.invalid_rule}')")
            await scenario(client, sc, mailboxes)
            for cid in mailboxes:
                print_waiting(sc.sessions, cid)
            say("\n-- email logging: organisation " + MAIL_ORG + ", Ann and Cy on Gmail, Bob and Dee on Microsoft 365 "
                "(emulators), the CRM knowing Pat Prospect of Northwind")
            mail_sc = MailScenario(store_url, crm_url, org_id=MAIL_ORG, connection_prefix=MAIL_PREFIX)
            await MailStages(client, mail_sc, say).run()
            say("\n-- calendar: organisation " + CALENDAR_ORG + ", Ann and Cy on Google Calendar (emulator), "
                "the project-management platform's calendar (series and exceptions)")
            cal_sc = CalendarScenario(store_url, crm_url, org_id=CALENDAR_ORG, connection_prefix=CALENDAR_PREFIX)
            await CalendarStages(client, cal_sc, say).run()
            if once:
                say("\n`make demo` (without --once) keeps the stack running to look at it in the Temporal UI.")
                return
            admin_token = dev_admin_token(STATE_DIR)
            router, _deps = build_webhooks(sc.sessions, lazy_temporal_signal(dev.target),
                                           org_signal=lazy_temporal_signal(dev.target, build=temporal_org_signal),
                                           platform_master_key=webhook_key, admin_token=admin_token)
            app = serve(create_app([router]))
            print_stack(dev, app, mailboxes, sc, store_url, crm_url, webhook_key, mail_sc, cal_sc)
            await asyncio.Event().wait()  # until Ctrl-C or SIGTERM cancels this task
    finally:
        if app is not None:
            app.stop()
        for mailbox in mailboxes.values():
            mailbox.server.stop()
        if mail_sc is not None:
            mail_sc.close()
        if cal_sc is not None:
            cal_sc.close()
        await asyncio.to_thread(dev.stop)


async def scenario(client, sc: Scenario, mailboxes: dict[str, MailboxDriver]) -> None:
    await api.start_sync(client, CONNECTION, sc.org_id, "google", poll_interval_s=600)
    await wait_for(client, CONNECTION, 1)
    st = await settled(client, sc.org_id, CONNECTION, 0)
    print_cycle("initial two-way sync", st)

    # Changes on both sides: a Gmail edit, a CRM edit, a conflicting edit of one
    # pair on both sides, a deletion in Gmail.
    names = sc.resource_names
    from store import repo
    with sc.sessions() as s:
        linked = repo.get_links_by_mailbox_ids(s, CONNECTION, names)
    pairs = [n for n in names if n in linked]
    if len(pairs) < 5:
        # --keep: the emulator starts anew each run (new ids), so the kept links name the
        # previous run's contacts; the guard holds their deletions and the new ones wait as
        # possible duplicates. There is no linked pair left to edit on both sides.
        say("\n-- the kept store links the previous run's mailbox contacts; this run's emulator has the same "
            "people under new ids, so the edit stages are skipped (see what waits for a person below)")
        return
    sc.mailbox.edit(pairs[0], company="Globex", job_title="CFO")           # edited in Gmail
    sc.mailbox.edit(pairs[1], company="Initech")                           # edited on both sides:
    sc.crm.user_edit(sc.org_id, linked[pairs[1]].platform_id, company="Initrode",
                     enforce_rules=False)                                  # a conflict (manual policy)
    sc.crm.user_edit(sc.org_id, linked[pairs[2]].platform_id, job_title="VP Sales",
                     enforce_rules=False)                                  # edited in the CRM
    sc.mailbox.delete(pairs[3])                                            # deleted in Gmail
    st = await sync_now(client, sc.org_id, CONNECTION)
    print_cycle("incremental cycle after edits on both sides", st)
    org = (await api.org_state(client, sc.org_id)).kinds.get("contacts")
    if org is not None:
        say(f"   organisation {org_workflow_id(sc.org_id)}: {org.reads} reads of the CRM, {org.changes} changes "
            f"mirrored, {org.wakes} mailbox wake-ups (only the mailboxes a change concerns)")

    if st.store.open_conflicts:
        review = st.store.open_conflicts[0]
        say(f"\n-- resolving conflict review {review} for the mailbox side (signal 'resolve')")
        await api.resolve(client, sc.sessions, CONNECTION, review, "mailbox")
        st = await wait_for(client, CONNECTION, st.cycles + 1)
        print_cycle("after the manual resolution", st)

    # A colleague connects a Microsoft 365 mailbox in the same organisation: the
    # person both know stays one CRM record.
    ms = make_mailbox("microsoft")
    mailboxes[MS_CONNECTION] = ms
    shared = sc.mailbox_contacts[names.index(pairs[4])]
    ms_ids = ms.seed([shared.model_copy(update={"emails": tuple(e.upper() for e in shared.email_addresses())}),
                      *make_people(5, seed=99)])
    connect_mailbox(sc.sessions, org_id=sc.org_id, connection_id=MS_CONNECTION, user_id="user_2", mailbox=ms)
    await api.start_sync(client, MS_CONNECTION, sc.org_id, "microsoft", poll_interval_s=600)
    await wait_for(client, MS_CONNECTION, 1)
    st = await settled(client, sc.org_id, MS_CONNECTION, 0)
    print_cycle("Microsoft 365 mailbox of user_2, same organisation", st)
    with sc.sessions() as s:
        ms_link = repo.get_links_by_mailbox_ids(s, MS_CONNECTION, [ms_ids[0]])
    if ms_link and ms_link[ms_ids[0]].platform_id == linked[pairs[4]].platform_id:
        say("   the person both mailboxes know is one CRM record "
            f"({linked[pairs[4]].platform_id}), linked from Gmail and from Outlook")


def main(argv: list[str] | None = None) -> None:
    try:
        config = settings.load()
    except settings.SettingsError as exc:
        sys.exit(f"demo: {exc}")
    parser = argparse.ArgumentParser(prog="python -m workers.demo",
                                     description="Concord demo on the embedded default")
    parser.add_argument("--port", type=int, default=config.temporal_port,
                        help="Temporal frontend port (default: $CONCORD_TEMPORAL_PORT or 7233)")
    parser.add_argument("--keep", action="store_true", help="keep the store and CRM of the previous run")
    parser.add_argument("--once", action="store_true",
                        help="run the scenario and stop everything (CI); by default the stack stays up until Ctrl-C")
    args = parser.parse_args(argv)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a shell without job control, Ctrl-C arrives
        # ignored; the demo is stopped by it, so it takes it back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 0
    try:
        asyncio.run(run(args.port, fresh=not args.keep, once=args.once))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("\n-- stopped: worker, HTTP app, emulators and the Temporal dev server we started")
    except PortBusy as exc:
        print(f"demo: {exc}; set CONCORD_TEMPORAL_PORT or pass --port", file=sys.stderr)
        code = 1
    except Fatal as exc:
        print(f"demo: {' '.join(str(exc).split())}", file=sys.stderr)
        code = 1
    exit_process(code)


if __name__ == "__main__":
    main()
