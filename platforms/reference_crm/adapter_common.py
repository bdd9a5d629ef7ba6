"""What the reference CRM's protocol adapters share (adapter.py, mail_adapter.py, outbox_adapter.py).

Each protocol method counts as one platform call, as a batch endpoint of a real
platform would; a feed cursor is the number of the last change read; and a batch
write reports what is wrong with one item in that item's WriteResult.error, while
Transient (the database itself failing) is raised, so the activity retries the whole
batch, which the idempotency keys make harmless.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

from sqlalchemy.engine import Engine

from connectors.protocols import WriteRequest, WriteResult
from models.errors import ConnectorError, CursorExpired, PreconditionFailed, Transient
from models.record import SideRecord
from platforms.reference_crm.service import ReferenceCrm


class CrmAdapter:
    """An adapter over a ReferenceCrm (or a database URL / engine holding one) that counts its calls."""

    provider = "reference_crm"

    def __init__(self, engine_or_url: Engine | str | ReferenceCrm) -> None:
        self.crm = engine_or_url if isinstance(engine_or_url, ReferenceCrm) else ReferenceCrm(engine_or_url)
        self._calls = 0
        self._lock = threading.Lock()

    @property
    def calls_made(self) -> int:
        return self._calls

    def _count(self) -> None:
        with self._lock:
            self._calls += 1


def feed_position(cursor: str | None) -> int:
    """The change number a cursor stands for (0: from the start); one that is not a
    number, or negative, was never issued here and raises CursorExpired."""
    try:
        after = int(cursor) if cursor else 0
    except ValueError:
        raise CursorExpired("cursor not recognised") from None
    if after < 0:
        raise CursorExpired("cursor not recognised")
    return after


def write_each(requests: Sequence[WriteRequest], write: Callable[[WriteRequest], SideRecord]) -> list[WriteResult]:
    """`write` for each request, its record or its ConnectorError in the request's
    WriteResult; a Transient stops the batch. One call, shared by the items."""
    share = 1.0 / max(len(requests), 1)
    results: list[WriteResult] = []
    for req in requests:
        try:
            rec = write(req)
        except Transient:
            raise  # the database, not the item: retry the batch (idempotency keys make it safe)
        except ConnectorError as exc:
            results.append(WriteResult(key=req.key, error=exc, calls=share))
        else:
            results.append(WriteResult(key=req.key, record=rec, calls=share))
    return results


def expected_version(etag: str | None) -> int | None:
    """The record version an etag stands for (None: no condition). An etag this platform
    never issued cannot match the current version."""
    if etag is None:
        return None
    try:
        return int(etag)
    except ValueError:
        raise PreconditionFailed("etag not recognised") from None
