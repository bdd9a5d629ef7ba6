"""The contacts sync at mailbox scale, through the real system.

Temporal dev server (own ports, own state file), a sync worker in its own process
(so its peak memory is its own and it does not share a GIL with the providers),
the People emulator on a real port reached through google-api-python-client, and
the reference CRM and the store on SQLite files (PostgreSQL with --pg).

Figures:
 1. the first two-way cycle of 10,000 mailbox contacts against 10,000 CRM records,
    20% of which are near-duplicates of mailbox contacts (all owned by the
    connection's user, so they flow to the mailbox too); the echo cycle that
    follows (our own writes coming back); blocking vs all-pairs as the baseline;
 2. an incremental cycle with 100 edits on each side;
 3. latency from the wake-up signal to the CRM write, over repeated single edits.

Before and after, in the same run: the first cycle runs once more, on a world of its
own, with the CRM adapter writing one transaction per record (`batch_size=0`, how it
wrote before the bulk endpoint); `per_record.initial.*` are its figures and
`compare.initial.*` set them beside the bulk path's (`--no-per-record` skips it).

Run: `python -m bench sync` (or `python -m bench.sync`), `--quick` for a smoke run;
`--people-latency 0.3` has the People emulator spend 0.3 s on each request, as a
provider's round trip does (the local emulator otherwise answers at once, which hides
time spent waiting on the mailbox); `--initial-only` stops after the first cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED = 20240607
ORG_ID = "org_bench"
USER_ID = "user_bench"
CONNECTION_ID = "conn-bench-google"
EMULATOR_TOKEN = "bench-token"

Report = Callable[..., None]


@dataclass
class Sizes:
    mailbox: int = 10_000
    crm: int = 10_000
    duplicate_share: float = 0.20
    changes: int = 100
    latency_runs: int = 30
    #: mailbox contacts scored against the whole CRM for the all-pairs baseline
    baseline_sample: int = 10
    #: also run the first cycle with one CRM transaction per record, for before/after
    per_record_baseline: bool = True
    #: seconds the People emulator spends on each request, as a provider's round trip
    #: does (0: a local emulator answers at once, which understates time spent waiting)
    people_latency_s: float = 0.0
    #: stop after the first cycle (its figures only)
    initial_only: bool = False

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(mailbox=300, crm=300, changes=10, latency_runs=5, baseline_sample=5)


# ----------------------------------------------------------------------------- the worker process


def peak_rss_kb() -> int:
    """This process's own peak resident set, in KiB.

    VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a worker started
    from a big parent would report the parent's size at fork time.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker_main(argv: list[str]) -> None:
    """`python -m bench.sync worker ...`: a sync worker that also reports its own counters.

    Built exactly as workers.worker builds one (build_activities + make_worker);
    every half second it writes CRM calls, peak RSS and CPU time to a JSON file
    the benchmark reads between cycles.
    """
    parser = argparse.ArgumentParser(prog="bench.sync worker")
    parser.add_argument("--target", required=True)
    parser.add_argument("--store-url", required=True)
    parser.add_argument("--crm-url", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--crm-batch", type=int, default=None,
                        help="CRM adapter items per bulk write; 0: a transaction per record (the baseline)")
    args = parser.parse_args(argv)

    from workers.temporal_client import connect
    from store.vault import KeyRing, generate_key
    from workers.worker import build_activities, make_worker

    stats_path = Path(args.stats)

    def write_stats(acts: Any) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        data = {
            "crm_calls": getattr(acts.pipelines["contacts"].platform, "calls_made", 0),
            "maxrss_kb": peak_rss_kb(),
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "at": time.time(),
        }
        tmp = stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(stats_path)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        client = await connect(args.target, tracing=False)
        acts = build_activities(args.store_url, args.crm_url, keyring=KeyRing.parse(f"bench:{generate_key()}"))
        if args.crm_batch is not None:
            acts.pipelines["contacts"].platform.batch_size = args.crm_batch
        async with make_worker(client, acts, task_queue=args.task_queue):
            while not stop.is_set():
                write_stats(acts)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
            write_stats(acts)

    asyncio.run(main())


class WorkerProcess:
    def __init__(self, target: str, store_url: str, crm_url: str, task_queue: str, workdir: Path,
                 crm_batch: int | None = None) -> None:
        self.stats_path = workdir / "worker-stats.json"
        self.log_path = workdir / "worker.log"
        self.cmd = [sys.executable, "-m", "bench.sync", "worker", "--target", target, "--store-url", store_url,
                    "--crm-url", crm_url, "--task-queue", task_queue, "--stats", str(self.stats_path)]
        if crm_batch is not None:
            self.cmd += ["--crm-batch", str(crm_batch)]
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 60.0) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not self.stats_path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited during start-up:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stats(self) -> dict:
        for _ in range(20):
            try:
                return json.loads(self.stats_path.read_text())
            except (OSError, ValueError):
                time.sleep(0.05)
        return {}

    def fresh_stats(self) -> dict:
        """Stats written after now (the file is refreshed twice a second)."""
        asked = time.time()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            st = self.stats()
            if st.get("at", 0) > asked:
                return st
            time.sleep(0.1)
        return self.stats()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> dict:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.stats()


# ----------------------------------------------------------------------------- the seeded world


@dataclass
class World:
    workdir: Path
    store_url: str
    crm_url: str
    people: Any  # emulators.google_people.PeopleState
    emulator: Any  # emulators.server.RunningServer
    crm: Any  # platforms.reference_crm.service.ReferenceCrm
    sessions: Any
    mailbox_names: list[str] = field(default_factory=list)
    crm_ids: list[str] = field(default_factory=list)
    #: mailbox position -> CRM id of its seeded near-duplicate
    near_duplicates: dict[int, str] = field(default_factory=dict)
    seed_s: dict[str, float] = field(default_factory=dict)
    mailbox_contacts: list = field(default_factory=list)
    #: CRM id -> the contact seeded there
    crm_contacts: dict = field(default_factory=dict)

    def close(self) -> None:
        self.emulator.stop()


def seed_world(workdir: Path, store_url: str, crm_url: str, sizes: Sizes, say: Callable[[str], None]) -> World:
    """The benchmark's mailbox, CRM and store rows (workers/scenario.py's recipe, at scale).

    CRM records are all owned by the connection's user so that every one of them
    belongs in the mailbox; near-duplicates are emulators.people_data's (formatting
    variants, typos, a lost address) of randomly chosen mailbox contacts.
    """
    from emulators.people_data import make_near_duplicate, make_people
    from connectors.google_people import contact_to_person
    from emulators.google_people import PeopleState, create_app
    from emulators.server import serve
    from platforms.reference_crm.service import MAX_BATCH, ContactWrite, CrmContact, ReferenceCrm
    from store import repo
    from store.db import make_engine, migrate, session_factory

    timings: dict[str, float] = {}
    rng = random.Random(SEED)
    n_dup = int(sizes.crm * sizes.duplicate_share)
    t0 = time.perf_counter()
    everyone = make_people(sizes.mailbox + sizes.crm - n_dup, SEED)
    mailbox, fresh = everyone[: sizes.mailbox], everyone[sizes.mailbox:]
    dup_of = rng.sample(range(sizes.mailbox), min(n_dup, sizes.mailbox))
    timings["datagen"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    state = PeopleState(static_tokens=(EMULATOR_TOKEN,))
    names = state.seed([contact_to_person(c) for c in mailbox])
    if sizes.people_latency_s:
        state.configure(latency={"any": sizes.people_latency_s})
    server = serve(create_app(state))
    timings["mailbox_seed"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    crm = ReferenceCrm(crm_url)
    world_dups: dict[int, str] = {}
    crm_ids: list[str] = []
    crm_contacts: dict = {}
    # Interleave duplicates and fresh records so the feed is not sorted by kind.
    plan: list[tuple[int | None, Any]] = [(i, make_near_duplicate(mailbox[i], rng)) for i in dup_of]
    plan += [(None, c) for c in fresh]
    rng.shuffle(plan)
    for start in range(0, len(plan), MAX_BATCH):
        part = plan[start:start + MAX_BATCH]
        recs = crm.write_contacts(ORG_ID, [ContactWrite(contact, owner_id=USER_ID) for _, contact in part],
                                  actor="seed", enforce_rules=False)
        for (pos, contact), rec in zip(part, recs, strict=True):
            if not isinstance(rec, CrmContact):
                raise RuntimeError(f"seeding the CRM failed: {type(rec).__name__}")
            crm_ids.append(rec.id)
            crm_contacts[rec.id] = contact
            if pos is not None:
                world_dups[pos] = rec.id
        if (start // MAX_BATCH + 1) % 5 == 0:
            say(f"seeded {start + len(part):,}/{len(plan):,} CRM records")
    timings["crm_seed"] = time.perf_counter() - t0

    migrate(store_url)
    sessions = session_factory(make_engine(store_url))
    with sessions.begin() as s:
        repo.create_org(s, ORG_ID, "Bench organisation", {"policy": "newest_wins"})
        repo.create_connection(s, id=CONNECTION_ID, org_id=ORG_ID, user_id=USER_ID, provider="google",
                               account_ref=f"acct-{CONNECTION_ID}",
                               settings={"endpoint": server.base_url, "token": EMULATOR_TOKEN})
    return World(workdir, store_url, crm_url, state, server, crm, sessions, names, crm_ids, world_dups, timings,
                 mailbox, crm_contacts)


# ----------------------------------------------------------------------------- measuring a cycle


@dataclass
class CycleFigures:
    seconds: float
    state: Any
    people_requests: Counter
    crm_calls: int
    worker_cpu_s: float
    activities: dict[str, float]
    results: dict[str, dict] = field(default_factory=dict)


async def activity_durations(handle, after_event_id: int) -> tuple[dict[str, float], dict[str, dict], int]:
    """Per activity type after `after_event_id`: seconds from schedule to completion, and
    the last result (counts only: results never carry contact content).

    Read from the workflow's own history, so the split is what Temporal saw
    (queueing and retries included), not what the worker believes.
    """
    history = await handle.fetch_history()
    scheduled: dict[int, tuple[str, float]] = {}
    durations: dict[str, float] = {}
    results: dict[str, dict] = {}
    last = after_event_id
    for ev in history.events:
        last = max(last, ev.event_id)
        at = ev.event_time.ToDatetime().timestamp()
        if ev.HasField("activity_task_scheduled_event_attributes"):
            scheduled[ev.event_id] = (ev.activity_task_scheduled_event_attributes.activity_type.name, at)
            continue
        for attr in ("activity_task_completed_event_attributes", "activity_task_failed_event_attributes",
                     "activity_task_timed_out_event_attributes"):
            if ev.HasField(attr) and ev.event_id > after_event_id:
                attrs = getattr(ev, attr)
                if attrs.scheduled_event_id in scheduled:
                    name, t_sched = scheduled[attrs.scheduled_event_id]
                    durations[name] = durations.get(name, 0.0) + at - t_sched
                    if attr.startswith("activity_task_completed") and attrs.result.payloads:
                        with contextlib.suppress(ValueError, UnicodeDecodeError):
                            value = json.loads(attrs.result.payloads[0].data)
                            if isinstance(value, dict):
                                results[name] = value
    return durations, results, last


async def run_cycle(client, world: World, worker: WorkerProcess, target_cycles: int | None, trigger, *,
                    say: Callable[[str], None], timeout: float = 3600, progress_every: float = 15.0,
                    history_mark: list[int]) -> CycleFigures:
    """Trigger a cycle and wait for the state query to count it and the mailbox to settle
    (no cycle running or asked for); measure what it cost."""
    from workers import client as api

    people_before = Counter(world.people.stats()["requests"])
    worker_before = worker.fresh_stats()
    if target_cycles is None:  # the cycle after the current one (the workflow may be woken meanwhile)
        target_cycles = 1
        with contextlib.suppress(Exception):
            target_cycles = (await api.state(client, CONNECTION_ID)).cycles + 1
    t0 = time.perf_counter()
    await trigger()
    next_note = t0 + progress_every
    handle = api.handle(client, CONNECTION_ID)
    while True:
        st = None
        with contextlib.suppress(Exception):
            st = await api.state(client, CONNECTION_ID)
        if st is not None and st.cycles >= target_cycles and not st.cycle_running and not st.wakeups_pending:
            break
        now = time.perf_counter()
        if now - t0 > timeout:
            raise RuntimeError(f"cycle {target_cycles} did not finish within {timeout:.0f}s")
        if not worker.alive():
            raise RuntimeError(f"the worker died:\n{worker.log_tail()}")
        if now >= next_note:
            next_note = now + progress_every
            running = ""
            with contextlib.suppress(Exception):
                desc = await handle.describe()
                pend = desc.raw_description.pending_activities
                running = ", ".join(f"{p.activity_type.name} (attempt {p.attempt})" for p in pend)
            reqs = sum(Counter(world.people.stats()["requests"]).values()) - sum(people_before.values())
            say(f"cycle {target_cycles}: {now - t0:6.1f}s, running: {running or '-'}; People requests so far {reqs:,}")
        await asyncio.sleep(0.1 if now - t0 < 5 else 0.5)
    seconds = time.perf_counter() - t0
    worker_after = worker.fresh_stats()
    people_after = Counter(world.people.stats()["requests"])
    acts, results, history_mark[0] = await activity_durations(handle, history_mark[0])
    return CycleFigures(
        seconds=seconds,
        state=st,
        people_requests=people_after - people_before,
        crm_calls=int(worker_after.get("crm_calls", 0) - worker_before.get("crm_calls", 0)),
        worker_cpu_s=float(worker_after.get("cpu_s", 0.0) - worker_before.get("cpu_s", 0.0)),
        activities=acts,
        results=results,
    )


def report_cycle(report: Report, prefix: str, fig: CycleFigures, contacts: int | None = None) -> None:
    c = fig.state.last_counts
    report(f"{prefix}.cycle_s", fig.seconds, "s")
    if contacts:
        report(f"{prefix}.contacts_per_s", contacts / fig.seconds, "contacts/s", f"{contacts:,} contacts in")
    people_total = sum(fig.people_requests.values())
    report(f"{prefix}.people_requests", people_total, "HTTP",
           " ".join(f"{k}={v}" for k, v in sorted(fig.people_requests.items())))
    report(f"{prefix}.crm_calls", fig.crm_calls, "calls", "adapter calls (each a batch endpoint)")
    if contacts:
        report(f"{prefix}.people_requests_per_contact", people_total / contacts, "per contact")
        report(f"{prefix}.crm_calls_per_contact", fig.crm_calls / contacts, "per contact")
    report(f"{prefix}.worker_cpu_s", fig.worker_cpu_s, "s", "worker process user+sys")
    for name, secs in sorted(fig.activities.items(), key=lambda kv: -kv[1]):
        report(f"{prefix}.activity.{name.removeprefix('contacts.')}", secs, "s", "scheduled -> completed")
    plan = fig.results.get("contacts.plan") or {}
    if plan.get("rules"):
        rules = sorted(plan["rules"].items(), key=lambda kv: -kv[1])
        report(f"{prefix}.planned", plan.get("planned", 0), "decisions", " ".join(f"{k}={v}" for k, v in rules))
    write = fig.results.get("contacts.write") or {}
    if write.get("calls"):
        report(f"{prefix}.write_calls", sum(write["calls"].values()), "calls",
               "as the write activity counts them: " + " ".join(f"{k}={v}" for k, v in sorted(write["calls"].items())))
    report(f"{prefix}.fetched", c.fetched, "records")
    report(f"{prefix}.linked", c.linked, "")
    report(f"{prefix}.created", c.created, "")
    report(f"{prefix}.updated", c.updated, "")
    report(f"{prefix}.skipped", c.skipped, "", "echoes and no-ops")
    report(f"{prefix}.duplicates", c.duplicates, "", "held for review")
    report(f"{prefix}.conflicts", c.conflicts, "")
    report(f"{prefix}.quarantined", c.quarantined, "")
    report(f"{prefix}.deferred", c.deferred, "")
    if fig.state.last_error:
        report(f"{prefix}.last_error", fig.state.last_error, "")


def require_clean(fig: CycleFigures, worker: WorkerProcess, what: str) -> None:
    """A failed cycle's figures mean nothing: stop with the worker's traceback."""
    if fig.state.last_error:
        raise RuntimeError(f"the {what} cycle failed ({fig.state.last_error}); worker log:\n{worker.log_tail(40)}")


# ----------------------------------------------------------------------------- baseline


def blocking_baseline(report: Report, world: World, sizes: Sizes) -> None:
    """What the blocking index saves: candidate pairs scored, and time on a sample vs all-pairs."""
    from sync.matching import CandidateIndex, Thresholds, best_match, match_all_pairs

    rng = random.Random(SEED + 1)
    mailbox = world.mailbox_contacts
    pool = dict(world.crm_contacts)

    index: CandidateIndex[str] = CandidateIndex()
    for key, contact in pool.items():
        index.add(key, contact)
    thresholds = Thresholds()
    t0 = time.perf_counter()
    comparisons = 0
    for contact in mailbox:
        comparisons += len(index.candidates(contact))
        best_match(contact, index, thresholds)
    blocked_s = time.perf_counter() - t0
    all_pairs = len(mailbox) * len(pool)
    report("baseline.blocked_comparisons", comparisons, "pairs", f"{comparisons / len(mailbox):.1f} per mailbox contact")
    report("baseline.all_pairs_comparisons", all_pairs, "pairs", "n*m")
    report("baseline.comparison_ratio", all_pairs / max(comparisons, 1), "x", "fewer pairs scored with blocking")
    report("baseline.blocked_match_s", blocked_s, "s", f"all {len(mailbox):,} mailbox contacts, index lookups + scoring")
    sample = rng.sample(mailbox, min(sizes.baseline_sample, len(mailbox)))
    t0 = time.perf_counter()
    for contact in sample:
        match_all_pairs(contact, pool, thresholds)
    per = (time.perf_counter() - t0) / len(sample)
    report("baseline.all_pairs_extrapolated_s", per * len(mailbox), "s",
           f"{len(sample)} contacts timed, x{len(mailbox):,}")
    report("baseline.matching_speedup", per * len(mailbox) / blocked_s, "x", "blocking vs all-pairs")


# ----------------------------------------------------------------------------- databases


@contextlib.contextmanager
def databases(workdir: Path, pg: bool):
    """(store_url, crm_url): SQLite files in the temp dir, or two throwaway PostgreSQL databases."""
    if not pg:
        yield f"sqlite:///{workdir / 'store.db'}", f"sqlite:///{workdir / 'crm.db'}"
        return
    import psycopg

    admin = os.environ.get("CONCORD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    plain = admin.replace("+psycopg", "")
    suffix = uuid.uuid4().hex[:8]
    names = [f"concord_bench_store_{suffix}", f"concord_bench_crm_{suffix}"]
    with psycopg.connect(plain, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base}/{names[0]}", f"{base}/{names[1]}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            for name in names:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


# ----------------------------------------------------------------------------- the benchmark


def _linked_pairs(world: World) -> list[tuple[str, str]]:
    """(mailbox resource name, CRM id) of every link, in seeded mailbox order."""
    from store import repo

    with world.sessions() as s:
        rows = repo.get_links_by_mailbox_ids(s, CONNECTION_ID, world.mailbox_names)
    return [(mid, rows[mid].platform_id) for mid in world.mailbox_names if mid in rows and rows[mid].platform_id]


def _note(person: dict | None) -> str:
    bios = (person or {}).get("biographies") or []
    return bios[0].get("value", "") if bios else ""


async def _run(report: Report, sizes: Sizes, pg: bool, say: Callable[[str], None], *,
               crm_batch: int | None = None) -> None:
    """The benchmark on a world of its own; `sizes.initial_only` stops after the first
    cycle (the per-record baseline), `crm_batch` sets the worker's CRM adapter batch size."""
    from workers import client as api
    from workers.devstack import DevServer, free_port_pair
    from workers.temporal_client import connect

    bench_t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="concord-bench-") as tmp, databases(Path(tmp), pg) as (store_url, crm_url):
        workdir = Path(tmp)
        port, ui_port = free_port_pair()
        dev = DevServer(port, ui_port, db_path=workdir / "temporal.db", reuse_existing=False, log_level="error",
                        announce=say)
        t0 = time.perf_counter()
        await dev.astart()
        report("setup.temporal_start_s", time.perf_counter() - t0, "s")
        if sizes.people_latency_s:
            report("setup.people_latency_s", sizes.people_latency_s, "s", "spent by the People emulator per request")
        world = None
        worker = None
        try:
            say(f"seeding {sizes.mailbox:,} mailbox contacts and {sizes.crm:,} CRM records "
                f"({sizes.duplicate_share:.0%} near-duplicates) on {'PostgreSQL' if pg else 'SQLite'}")
            world = seed_world(workdir, store_url, crm_url, sizes, say)
            for k, v in world.seed_s.items():
                report(f"setup.{k}_s", v, "s")
            tq = f"bench-{uuid.uuid4().hex[:8]}"
            worker = WorkerProcess(dev.target, store_url, crm_url, tq, workdir, crm_batch=crm_batch)
            worker.start()
            client = await connect(dev.target, tracing=False)
            mark = [0]
            total = sizes.mailbox + sizes.crm

            # 1. the first two-way cycle
            say("1. initial two-way cycle (start_sync until state().cycles == 1)")
            fig = await run_cycle(client, world, worker, 1,
                                  lambda: api.start_sync(client, CONNECTION_ID, ORG_ID, "google",
                                                         poll_interval_s=3600, task_queue=tq),
                                  say=say, history_mark=mark)
            report_cycle(report, "initial", fig, total)
            require_clean(fig, worker, "initial")
            report("initial.links_after", fig.state.store.links, "links")
            report("initial.worker_peak_rss", worker.fresh_stats().get("maxrss_kb", 0) / 1024, "MiB",
                   "worker process only (VmHWM)")
            report("initial.mailbox_after", world.people.stats()["persons"], "contacts")
            report("initial.crm_after", len(world.crm.list_contacts(ORG_ID, limit=10 * total)), "records")
            if sizes.initial_only:
                return

            say("baseline: blocking index vs all-pairs on the same data")
            blocking_baseline(report, world, sizes)

            # our own writes come back once as echoes: measured apart from the edits
            say("echo cycle (the first cycle's own writes come back: the CRM's through the organisation's read)")
            fig = await run_cycle(client, world, worker, None,
                                  lambda: api.sync_now(client, ORG_ID, CONNECTION_ID, timeout=3600),
                                  say=say, history_mark=mark)
            report_cycle(report, "echo", fig)
            require_clean(fig, worker, "echo")

            # 2. incremental: edits on both sides
            pairs = _linked_pairs(world)
            need = 2 * sizes.changes + sizes.latency_runs
            if len(pairs) < need:
                raise RuntimeError(f"only {len(pairs)} links after the first cycle; {need} needed")
            random.Random(SEED + 2).shuffle(pairs)
            mailbox_side, crm_side = pairs[: sizes.changes], pairs[sizes.changes: 2 * sizes.changes]
            latency_pairs = pairs[2 * sizes.changes: need]
            say(f"2. incremental cycle: {sizes.changes} mailbox edits + {sizes.changes} CRM edits")
            for i, (mid, _) in enumerate(mailbox_side):
                world.people.user_edit(mid, {"biographies": [{"value": f"mailbox edit {i}", "contentType": "TEXT_PLAIN"}]})
            for i, (_, pid) in enumerate(crm_side):
                world.crm.user_edit(ORG_ID, pid, job_title=f"CRM edit {i}")
            # A CRM webhook wakes the organisation's workflow, which reads the CRM once and
            # wakes this mailbox; the mailbox's own push wakes it too: both in one cycle.
            fig = await run_cycle(client, world, worker, None,
                                  lambda: api.sync_now(client, ORG_ID, CONNECTION_ID, timeout=3600),
                                  say=say, history_mark=mark)
            report_cycle(report, "incremental", fig, 2 * sizes.changes)
            require_clean(fig, worker, "incremental")
            landed_crm = sum(1 for i, (_, pid) in enumerate(mailbox_side)
                             if (rec := world.crm.get_contact(ORG_ID, pid)) and rec.contact.notes == f"mailbox edit {i}")
            landed_mb = 0
            for i, (mid, _) in enumerate(crm_side):
                orgs = (world.people.person(mid) or {}).get("organizations") or []
                landed_mb += any(o.get("title") == f"CRM edit {i}" for o in orgs)
            report("incremental.edits_landed", landed_crm + landed_mb, f"of {2 * sizes.changes}",
                   f"mailbox->CRM {landed_crm}, CRM->mailbox {landed_mb}")

            # 3. latency: wake signal -> CRM write
            say(f"3. latency, {sizes.latency_runs} runs: edit one mailbox contact, wake, poll the CRM")
            latencies: list[float] = []
            cycle_times: list[float] = []
            cycles = (await api.state(client, CONNECTION_ID)).cycles
            for run_no, (mid, pid) in enumerate(latency_pairs):
                marker = f"latency {run_no} {uuid.uuid4().hex[:6]}"
                world.people.user_edit(mid, {"biographies": [{"value": marker, "contentType": "TEXT_PLAIN"}]})
                t0 = time.perf_counter()
                await api.wake(client, CONNECTION_ID, "bench")
                deadline = t0 + 120
                while True:
                    rec = await asyncio.to_thread(world.crm.get_contact, ORG_ID, pid)
                    if rec is not None and rec.contact.notes == marker:
                        latencies.append(time.perf_counter() - t0)
                        break
                    if time.perf_counter() > deadline:
                        raise RuntimeError(f"latency run {run_no}: the edit did not reach the CRM in 120s")
                    await asyncio.sleep(0.01)
                cycles += 1
                while (await api.state(client, CONNECTION_ID)).cycles < cycles:
                    await asyncio.sleep(0.02)
                cycle_times.append(time.perf_counter() - t0)
            from bench.report import percentile

            report("latency.runs", len(latencies), "")
            report("latency.p50_s", percentile(latencies, 50), "s", "wake signal -> edit visible in the CRM")
            report("latency.p95_s", percentile(latencies, 95), "s")
            report("latency.max_s", max(latencies), "s")
            report("latency.cycle_p50_s", percentile(cycle_times, 50), "s", "wake signal -> cycle counted")
            report("latency.poll_interval_s", 3600, "s", "so only the signal wakes it")

            st = await api.state(client, CONNECTION_ID)
            report("end.worker_peak_rss", worker.fresh_stats().get("maxrss_kb", 0) / 1024, "MiB", "worker process only")
            report("end.bench_process_peak_rss", peak_rss_kb() / 1024, "MiB",
                   "benchmark process: People emulator, CRM seeding, driver (and any benchmark run before)")
            report("end.cycles", st.cycles, "")
            report("end.total_s", time.perf_counter() - bench_t0, "s")
        finally:
            if worker is not None:
                worker.stop()
            if world is not None:
                world.close()
            await asyncio.to_thread(dev.stop)


def run(report: Report = print, *, quick: bool = False, pg: bool = False, sizes: Sizes | None = None,
        say: Callable[[str], None] | None = None) -> None:
    """Run the sync benchmark; `report(name, value, unit, note)` receives each figure."""
    sizes = sizes or (Sizes.quick() if quick else Sizes())
    say = say or (lambda text: print(f"  # {text}", flush=True))
    before: dict[str, Any] = {}
    if sizes.per_record_baseline:
        say("before: the first cycle with one CRM transaction per record (the adapter's batch_size=0)")

        def report_before(name: str, value: Any, unit: str = "", note: str = "") -> None:
            if name.startswith("initial."):
                before[name] = value
                report(f"per_record.{name}", value, unit, note)

        asyncio.run(_run(report_before, replace(sizes, initial_only=True), pg, say, crm_batch=0))
        say("after: the same, through the CRM's bulk write")
    after: dict[str, Any] = {}

    def report_after(name: str, value: Any, unit: str = "", note: str = "") -> None:
        after[name] = value
        report(name, value, unit, note)

    asyncio.run(_run(report_after, sizes, pg, say))
    if before:
        compare_initial(report, before, after, sizes.mailbox + sizes.crm)


def compare_initial(report: Report, before: dict[str, Any], after: dict[str, Any], contacts: int) -> None:
    """The first cycle per record and in bulk, side by side: seconds, contacts/s, ratio."""
    for figure, what in (("initial.cycle_s", "first two-way cycle"),
                         ("initial.activity.write", "its write activity (platform and mailbox writes)")):
        then, now = before.get(figure), after.get(figure)
        if not (isinstance(then, (int, float)) and isinstance(now, (int, float)) and now > 0):
            continue
        short = figure.removeprefix("initial.").replace("activity.", "")
        report(f"compare.initial.{short}.per_record", then, "s", what + ", a CRM transaction per record")
        report(f"compare.initial.{short}.bulk", now, "s", what + ", the CRM's bulk write")
        report(f"compare.initial.{short}.per_record_contacts_per_s", contacts / then, "contacts/s",
               f"{contacts:,} contacts in")
        report(f"compare.initial.{short}.bulk_contacts_per_s", contacts / now, "contacts/s")
        report(f"compare.initial.{short}.speedup", then / now, "x", "per record / bulk")


def _count(text: str) -> int:
    """A size on the command line: a whole number of at least 1 (argparse says so in one line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"wants at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    """A delay on the command line: seconds, 0 to 10."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"wants seconds, not {text!r}") from None
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"wants 0 to 10 seconds, not {text}")
    return value


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        worker_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.sync",
                                     description="Contacts sync benchmark through the real system")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--pg", action="store_true", help="store and CRM on PostgreSQL at 127.0.0.1:5432")
    parser.add_argument("--mailbox", type=_count, help="mailbox contacts (default 10,000)")
    parser.add_argument("--crm", type=_count, help="CRM records (default 10,000)")
    parser.add_argument("--no-per-record", action="store_true",
                        help="skip the before figure (the first cycle with a CRM transaction per record)")
    parser.add_argument("--people-latency", type=_seconds, default=0.0, metavar="SECONDS",
                        help="time the People emulator spends on each request, like a provider's round trip")
    parser.add_argument("--initial-only", action="store_true", help="stop after the first cycle")
    args = parser.parse_args(argv)
    from bench.report import Table

    sizes = Sizes.quick() if args.quick else Sizes()
    if args.mailbox:
        sizes.mailbox = args.mailbox
    if args.crm:
        sizes.crm = args.crm
    if args.no_per_record:
        sizes.per_record_baseline = False
    sizes.people_latency_s = args.people_latency
    sizes.initial_only = args.initial_only
    print("# python -m bench.sync " + " ".join(argv), flush=True)
    table = Table("sync")
    run(table, pg=args.pg, sizes=sizes, say=table.note)
    table.print()


if __name__ == "__main__":
    from bench.report import exit_after_printing

    main()
    exit_after_printing(0)
