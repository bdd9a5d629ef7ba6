"""`python -m bench [--quick] [--pg] [--size K=N,...] [--against REV] [NAME ...]`: run the benchmarks and print their figures.

Benchmarks print figures, each next to the simplest baseline measured in the same
run; they are not timed tests and fail only when the system under them does.
Names pick some of them (default: all, in the order below); --quick scales sizes
down for a smoke run; --against REV also runs REV's own benchmarks (see
bench/against.py) and prints each figure beside its earlier value.
"""

from __future__ import annotations

import argparse
import inspect
import platform
import sys
import time
import traceback
from typing import Callable

from bench.report import Table


def _matching(table: Table, quick: bool, pg: bool) -> None:
    from bench import matching

    kwargs = {"existing": 5_000, "incoming": 500, "sample": 100, "all_pairs_sample": 10} if quick else {}
    accepted = inspect.signature(matching.run).parameters
    matching.run(table, **{k: v for k, v in kwargs.items() if k in accepted})


def _sync(table: Table, quick: bool, pg: bool) -> None:
    from bench import sync

    sync.run(table, quick=quick, pg=pg, say=table.note)


def _webhooks(table: Table, quick: bool, pg: bool) -> None:
    from bench import webhooks

    webhooks.run(table, count=500 if quick else webhooks.COUNT)


def _push(table: Table, quick: bool, pg: bool) -> None:
    from bench import push

    push.run(table, quick=quick)


def _org(table: Table, quick: bool, pg: bool) -> None:
    from bench import org

    kwargs = {"mailboxes": 10, "records": 1_000, "changes": 10, "burst": 100} if quick else {}
    org.run(table, pg=pg, say=table.note, **kwargs)


def _mail(table: Table, quick: bool, pg: bool) -> None:
    from bench import mail

    mail.run(table, quick=quick, pg=pg, say=table.note)


def _scale(table: Table, quick: bool, pg: bool) -> None:
    from bench import scale

    scale.run(table, quick=quick, say=table.note)


def _send(table: Table, quick: bool, pg: bool) -> None:
    from bench import send

    send.run(table, quick=quick, pg=pg, say=table.note)


def _calendar(table: Table, quick: bool, pg: bool) -> None:
    from bench import calendar

    calendar.run(table, quick=quick, say=table.note, size=calendar.parse_size(OPTIONS.get("size"), quick))


#: options some benchmarks take (main fills them from the command line)
OPTIONS: dict[str, str | None] = {}

BENCHMARKS: dict[str, tuple[str, Callable[[Table, bool, bool], None]]] = {
    "matching": ("duplicate detection: blocking index vs all-pairs, precision/recall", _matching),
    "sync": ("contacts sync through Temporal, the People emulator and the reference CRM", _sync),
    "webhooks": ("webhook intake: accepted notifications per second on one core", _webhooks),
    "push": ("Graph notification POST -> CRM write latency, through webhooks and Temporal", _push),
    "org": ("the platform read once per organisation: 50 mailboxes, 10,000 records, per change", _org),
    "mail": ("email logging: Gmail backfill and quota, exactly once, pacing, push -> CRM latency", _mail),
    "scale": ("10,000 idle mailboxes on one worker, 1,000 woken at once on 1 and 2 workers, webhook intake "
              "per CPU-second", _scale),
    "send": ("two-way send: outbox -> Sent latency, exactly once under worker kills, vs a naive sender", _send),
    "calendar": ("calendar: initial sync, provider calls per changed event, meetings once, push -> platform "
                 "latency, vs one event per call", _calendar),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="scale sizes down for a smoke run")
    parser.add_argument("--pg", action="store_true", help="PostgreSQL at 127.0.0.1:5432 where a benchmark supports it")
    parser.add_argument("--size", metavar="K=N,...",
                        help="calendar sizes over the default (full, or quick with --quick), e.g. "
                             "mailboxes=10,events=1000,series=100,rounds=40,burst=100")
    parser.add_argument("--against", metavar="REV", help="also run the benchmarks of this git revision, for before/after")
    args = parser.parse_args(argv)
    if args.size:
        from bench import calendar  # only the calendar benchmark takes sizes
        try:
            calendar.parse_size(args.size, args.quick)
        except ValueError as exc:
            parser.error(f"--size: {exc}")
    OPTIONS["size"] = args.size

    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)

    command = " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])])
    print(f"# {command}")
    print(f"# {platform.python_implementation()} {platform.python_version()} on {platform.machine()}, "
          f"{_cpus()} CPUs{', quick sizes' if args.quick else ''}", flush=True)
    tables: list[Table] = []
    failed: list[str] = []
    for name in names:
        title, fn = BENCHMARKS[name]
        print(f"\n=== {name}: {title} ===", flush=True)
        table = Table(name)
        tables.append(table)
        started = time.perf_counter()
        try:
            fn(table, args.quick, args.pg)
        except Exception:
            failed.append(name)
            traceback.print_exc()
        table(f"{name}.bench_s", time.perf_counter() - started, "s", "whole benchmark incl. setup")

    print(f"\n=== summary: {command} ===")
    for table in tables:
        print()
        table.print()
    if args.against:
        from bench import against

        before = against.run_earlier(args.against, names, args.quick, args.pg)
        print(against.compare(tables, before, args.against), flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


if __name__ == "__main__":
    from bench.report import exit_after_printing

    exit_after_printing(main())
