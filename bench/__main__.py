"""`python -m bench [--quick] [--pg] [NAME ...]`: run the benchmarks and print their figures.

Benchmarks print figures, each next to the simplest baseline measured in the same
run; they are not timed tests and fail only when the system under them does.
Names pick some of them (default: all, in the order below); --quick scales sizes
down for a smoke run.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import platform
import sys
import time
import traceback
from typing import Callable

from bench.report import Table


def _matching(table: Table, quick: bool, pg: bool) -> None:
    from bench import matching

    kwargs = {"existing": 5_000, "incoming": 500, "sample": 10} if quick else {}
    accepted = inspect.signature(matching.run).parameters
    matching.run(table, **{k: v for k, v in kwargs.items() if k in accepted})


def _sync(table: Table, quick: bool, pg: bool) -> None:
    from bench import sync

    sync.run(table, quick=quick, pg=pg, say=table.note)


def _webhooks(table: Table, quick: bool, pg: bool) -> None:
    module = importlib.import_module("bench.webhooks")
    accepted = inspect.signature(module.run).parameters
    kwargs = {k: v for k, v in (("quick", quick), ("pg", pg)) if k in accepted}
    if quick and "quick" not in accepted and "count" in accepted:
        kwargs["count"] = max(200, getattr(module, "COUNT", 5_000) // 10)
    module.run(table, **kwargs)


def _webhooks_present() -> bool:
    try:
        return importlib.util.find_spec("bench.webhooks") is not None
    except (ImportError, ValueError):
        return False


BENCHMARKS: dict[str, tuple[str, Callable[[Table, bool, bool], None]]] = {
    "matching": ("duplicate detection: blocking index vs all-pairs, precision/recall", _matching),
    "sync": ("contacts sync through Temporal, the People emulator and the reference CRM", _sync),
    "webhooks": ("webhook intake", _webhooks),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="scale sizes down for a smoke run")
    parser.add_argument("--pg", action="store_true", help="PostgreSQL at 127.0.0.1:5432 where a benchmark supports it")
    args = parser.parse_args(argv)

    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    if "webhooks" in names and not _webhooks_present():
        if args.names:
            parser.error("bench/webhooks.py is not there yet")
        names.remove("webhooks")

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
    sys.exit(main())
