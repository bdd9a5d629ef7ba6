"""Reading one side whole: every page of a listing, live records kept by id.

Reconciliation and erase both need an end as it is now, independent of Concord's
cursors: a mailbox's full listing (`list_changes(None, page)`) or a platform's whole
feed (`changes_since(org, cursor)`). Rate limits are waited out and transient
errors repeated in place (the pages are safe to read again); each page heartbeats.
"""

from __future__ import annotations

from typing import Callable

from activities.pacing import Pacer
from activities.pipeline import _heartbeat
from connectors.protocols import DeltaPage


def full_listing(read_page: Callable[[str | None], DeltaPage], *, wait=None) -> dict:
    """external id -> record, for every record the listing reports live."""
    out: dict = {}
    token: str | None = None
    pages = 0
    pacer = Pacer(lambda: (pages,), sleep=wait)
    while True:
        page = pacer.idempotent(read_page, token)
        pages += 1
        for rec in page.records:
            if rec.deleted:
                out.pop(rec.external_id, None)
            else:
                out[rec.external_id] = rec
        if page.next_page is None:
            return out
        token = page.next_page
        _heartbeat(pages)
