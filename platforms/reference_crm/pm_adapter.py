"""The reference platform's PM calendar behind `connectors.protocols.PlatformSide[Event]`.

Like the contacts adapter (adapter.py) it is a thin translation from the platform's
own API (pm_service.CrmCalendar) to SideRecords, WriteResults and the recovery-keyed
errors, one platform call per protocol method. The organisation's flavour stays on
this side of the boundary: in both flavours the records are canonical (a series
master, its exceptions keyed by (uid, recurrence_id), single events), each with the
platform user who owns it as `owner`.

Feed cursors are "cal:<change number>". The prefix lets a cursor of another feed
(the contacts feed issues bare numbers) be recognised as foreign: CursorExpired,
as for a number ahead of this organisation's calendar feed.
"""

from __future__ import annotations

from typing import Sequence

from connectors.protocols import DeltaPage, WriteRequest, WriteResult
from models.errors import ConnectorError, CursorExpired, Fatal, NotFound
from models.event import Event, EventRecord
from models.record import SideRecord
from platforms.reference_crm.adapter_common import CrmAdapter, expected_version, write_each
from platforms.reference_crm.pm_service import MAX_BATCH, CrmCalendar, EventWrite

CURSOR_PREFIX = "cal:"


def _tombstone(external_id: str) -> SideRecord:
    return EventRecord(side="platform", external_id=external_id, content=None, deleted=True)


def _position(cursor: str | None) -> int:
    if not cursor:
        return 0
    number = cursor.removeprefix(CURSOR_PREFIX)
    if number == cursor or not number.isdigit():
        raise CursorExpired("cursor not recognised")
    return int(number)


def _event(content: object) -> Event:
    if isinstance(content, Event):
        return content
    if isinstance(content, dict):
        return Event(**content)
    raise Fatal("upsert without an event")


class ReferenceCrmCalendar(CrmAdapter):
    """PlatformSide[Event] over a ReferenceCrm (or a database URL / engine holding one)."""

    @property
    def calendar(self) -> CrmCalendar:
        return self.crm.calendar

    def changes_since(self, org_id: str, cursor: str | None, limit: int = 500) -> DeltaPage:
        """One page of the feed; `next_page` repeats the cursor when the page was full."""
        self._count()
        after = _position(cursor)
        if after > self.calendar.feed_head(org_id):
            raise CursorExpired("cursor ahead of this organisation's calendar feed")
        recs, last = self.calendar.changes_since(org_id, after, limit)
        token = f"{CURSOR_PREFIX}{last}"
        return DeltaPage(records=[r.to_side_record() for r in recs],
                         next_page=token if len(recs) >= limit else None, cursor=token)

    def get_many(self, org_id: str, external_ids: Sequence[str]) -> list[SideRecord]:
        self._count()
        found = self.calendar.get_events(org_id, external_ids)
        return [found[i].to_side_record() if i in found else _tombstone(i) for i in external_ids]

    def upsert_many(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Creates and updates in batch writes (`CrmCalendar.put_events`: one transaction,
        a savepoint per item, up to MAX_BATCH a call). A create of a meeting the platform
        already holds (same uid and recurrence_id) answers with that record."""
        results: list[WriteResult] = []
        for i in range(0, len(requests), MAX_BATCH):
            chunk = requests[i:i + MAX_BATCH]
            self._count()
            items, bad = [], {}
            for req in chunk:
                problem = req.malformed("update" if req.external_id else "create")
                try:
                    if problem is not None:
                        raise problem
                    items.append(EventWrite(_event(req.content), event_id=req.external_id, owner_id=req.owner,
                                            expected_version=expected_version(req.etag) if req.external_id else None,
                                            idempotency_key=req.key))
                except ConnectorError as exc:  # this item's own fault: it fails alone
                    bad[req.key] = exc
            answers = iter(self.calendar.put_events(org_id, items) if items else [])
            share = 1.0 / max(len(chunk), 1)
            for req in chunk:
                if req.key in bad:
                    results.append(WriteResult(key=req.key, error=bad[req.key], calls=share))
                    continue
                got = next(answers)
                if isinstance(got, ConnectorError):
                    results.append(WriteResult(key=req.key, error=got, calls=share))
                else:
                    results.append(WriteResult(key=req.key, record=got.to_side_record(), calls=share))
        return results

    def delete_many(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Deletes; an id that is gone (or never existed here) counts as deleted."""
        self._count()

        def delete(req: WriteRequest) -> SideRecord:
            if not req.external_id:
                raise Fatal("delete without an external id")
            try:
                rec = self.calendar.delete_event(org_id, req.external_id, idempotency_key=req.key,
                                                 expected_version=expected_version(req.etag), actor="sync")
            except NotFound:
                return _tombstone(req.external_id)
            return rec.to_side_record()

        return write_each(requests, delete)

    def series_master(self, org_id: str, uid: str) -> SideRecord | None:
        """The live series master (or single event) of a meeting, by its UID: a "this and
        following" exception is split against it (activities/calendar.py)."""
        self._count()
        found = self.calendar.find_by_key(org_id, uid, "")
        return found.to_side_record() if found is not None and not found.deleted else None

    def extend_horizon(self, org_id: str, until) -> int:
        """Roll a "singles" organisation's expansion horizon forward (the workflow's
        periodic call); a no-op for "native". Adds no feed entries."""
        self._count()
        return self.calendar.extend_horizon(org_id, until)
