"""Aligned figure tables for the benchmarks.

Benchmarks report figures as they get them (a 10k run takes minutes, and a line
printed early tells the reader it is alive) and a table at the end that can be
pasted into a report as it is. `Table` is both: call it like `print` with
(name, value, unit) — the signature bench.matching.run expects — and `render()`
it once the run is over.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO


def fmt(value: object) -> str:
    """Numbers at a precision a reader can compare at a glance."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.1f}"
        if magnitude >= 1:
            return f"{value:.2f}"
        if magnitude == 0:
            return "0"
        return f"{value:.4f}"
    return str(value)


@dataclass
class Row:
    name: str
    value: object
    unit: str = ""
    note: str = ""


class Table:
    """Rows of (name, value, unit, note); prints each row as it arrives when `live`."""

    def __init__(self, title: str = "", *, out: TextIO | None = None, live: bool = True, name_width: int = 44) -> None:
        self.title = title
        self.rows: list[Row] = []
        self.out = out
        self.live = live
        self.name_width = name_width

    def _stream(self) -> TextIO:
        return self.out or sys.stdout

    def __call__(self, name: str, value: object, unit: str = "", note: str = "") -> None:
        row = Row(name, value, unit, note)
        self.rows.append(row)
        if self.live:
            print(self._line(row, self.name_width, 14), file=self._stream(), flush=True)

    def note(self, text: str) -> None:
        """A line of context (progress, the command run) that is not a figure."""
        print(f"  # {text}", file=self._stream(), flush=True)

    def value(self, name: str, default: object = None) -> object:
        for row in reversed(self.rows):
            if row.name == name:
                return row.value
        return default

    @staticmethod
    def _line(row: Row, name_width: int, value_width: int) -> str:
        text = f"{row.name:<{name_width}} {fmt(row.value):>{value_width}} {row.unit}"
        if row.note:
            text = f"{text:<{name_width + value_width + 16}} {row.note}"
        return text.rstrip()

    def render(self) -> str:
        if not self.rows:
            return f"== {self.title} ==\n(no figures)"
        name_width = max(len("figure"), *(len(r.name) for r in self.rows))
        value_width = max(len("value"), *(len(fmt(r.value)) for r in self.rows))
        unit_width = max(len("unit"), *(len(r.unit) for r in self.rows))
        lines = [f"== {self.title} ==" if self.title else ""]
        header = f"{'figure':<{name_width}} {'value':>{value_width}} {'unit':<{unit_width}} note"
        lines += [header.rstrip(), "-" * len(header)]
        for r in self.rows:
            lines.append(f"{r.name:<{name_width}} {fmt(r.value):>{value_width}} {r.unit:<{unit_width}} {r.note}".rstrip())
        return "\n".join(line for line in lines if line != "" or not self.title)

    def print(self) -> None:
        print(self.render(), file=self._stream(), flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed value, never interpolated."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n*q/100), at least the first
    return ordered[int(min(rank, len(ordered))) - 1]


def list_at_least(connector, n: int) -> int:
    """Page through `connector.list_changes` from the start until `n` records (or the
    end): the naive baselines' listing, whose calls the benchmarks then count."""
    listed, page = 0, None
    while listed < n:
        got = connector.list_changes(None, page)
        listed += len(got.records)
        page = got.next_page
        if page is None:
            break
    return listed


def exit_after_printing(code: int | None) -> None:
    """Leave without the interpreter's finalisation once everything is printed.

    A benchmark that ran Temporal leaves the SDK's native runtime threads behind; one
    calling back into Python while the interpreter finalised aborted a finished run
    ("PyGILState_Release: thread state must be current", exit -6) after its table was
    printed. The benchmarks that start Temporal end here.
    """
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
