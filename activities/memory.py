"""The cyclic garbage collector, paused around an activity's bulk work.

A plan or a write over 10,000 contacts allocates millions of small objects (validated
models, normalised views, key sets) that form no reference cycles. With the collector
on, every few thousand allocations it walks all surviving objects again, so its cost
grows with the batch: for a first cycle it was a large share of the plan. Reference
counting still frees everything; the collector runs again when the work ends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the collector for the block (process-wide; other threads' garbage waits too).

    Only the caller that paused it starts it again, so overlapping activities on a
    worker's threads never leave it off.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()
