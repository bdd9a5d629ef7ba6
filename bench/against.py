"""The same benchmarks on an earlier revision, in the same run: "before" beside "after".

A figure means little without the one it replaces, measured on the same machine at
the same moment. `python -m bench --against REV` checks REV out into a temporary git
worktree, runs that revision's own benchmarks (its `bench/__main__.py`) with this
environment's interpreter, and prints each figure next to this revision's with the
ratio. The earlier code runs as it was, in a process of its own, from its worktree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import Row, Table, fmt

#: run inside the old worktree: its benchmarks, figures out as JSON on the last line
_RUNNER = r"""
import json, sys
from bench.__main__ import BENCHMARKS
from bench.report import Table
names, quick, pg = json.loads(sys.argv[1])
out = {}
for name in names:
    if name not in BENCHMARKS:
        continue
    table = Table(name, live=False)
    try:
        BENCHMARKS[name][1](table, quick, pg)
    except Exception as exc:
        print(f"# {name} failed at the earlier revision: {type(exc).__name__}", file=sys.stderr)
    out[name] = [[r.name, r.value, r.unit] for r in table.rows]
print("\n" + json.dumps(out))
"""


def run_earlier(rev: str, names: list[str], quick: bool, pg: bool) -> dict[str, list[Row]]:
    root = Path(__file__).resolve().parent.parent
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=root, capture_output=True,
                         text=True)
    if sha.returncode != 0:
        raise SystemExit(f"bench: {rev!r} is not a revision of this repository")
    with tempfile.TemporaryDirectory(prefix="concord-bench-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), sha.stdout.strip()], cwd=root,
                       check=True)
        try:
            print(f"# running the benchmarks of {rev} ({sha.stdout.strip()[:10]}) from {tree}", flush=True)
            proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps([names, quick, pg])], cwd=tree,
                                  env={**_env(), "PYTHONPATH": str(tree)}, capture_output=True, text=True)
            sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
            last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
            try:
                raw = json.loads(last)
            except ValueError:
                raw = {}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, check=False)
    return {name: [Row(n, v, u) for n, v, u in rows] for name, rows in raw.items()}


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def compare(after: list[Table], before: dict[str, list[Row]], rev: str) -> str:
    """One table per benchmark: each figure now, at `rev`, and now / then."""
    lines: list[str] = []
    for table in after:
        old = {r.name: r for r in before.get(table.title, [])}
        width = max([len("figure"), *(len(r.name) for r in table.rows)])
        lines.append(f"\n== {table.title}: this revision against {rev} ==")
        header = f"{'figure':<{width}} {'now':>14} {rev[:14]:>14} {'now/then':>9} unit"
        lines += [header, "-" * len(header)]
        for r in table.rows:
            then = old.get(r.name)
            ratio = ""
            if then is not None and _number(r.value) and _number(then.value) and then.value:
                ratio = f"{r.value / then.value:.2f}"
            lines.append(f"{r.name:<{width}} {fmt(r.value):>14} {fmt(then.value) if then else '-':>14} "
                         f"{ratio:>9} {r.unit}".rstrip())
    return "\n".join(lines)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
