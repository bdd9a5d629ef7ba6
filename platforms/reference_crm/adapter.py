"""The reference CRM behind `connectors.protocols.PlatformContacts`.

This is the Python-adapter route a product team would take: a thin translation
from the platform's own API (service.py) to SideRecords, WriteResults and the
recovery-keyed errors. Each protocol method counts as one platform call, as a
batch endpoint of a real platform would.

Per-item outcomes (validation, stale etag, missing record, reused key) come back
in WriteResult.error; Transient (the database itself failing) is raised, so the
activity retries the whole batch, which the idempotency keys make harmless.
`WriteRequest.marker` is not stored: the idempotency key already finds a create
that crashed after committing.

Upserts go to the CRM's bulk endpoint (ReferenceCrm.write_contacts), up to
`batch_size` items per call, each call one transaction with a savepoint per item:
committing every record on its own made the write phase of a first sync most of its
time. `batch_size=0` sends one create/update call per record, as before (the
benchmark's baseline).
"""

from __future__ import annotations

from typing import Callable, Sequence

from sqlalchemy.engine import Engine

from models.errors import CursorExpired, Fatal, NotFound, PreconditionFailed
from connectors.protocols import DeltaPage, WriteRequest, WriteResult
from models.contact import ContactRecord
from models.record import SideRecord
from platforms.reference_crm import field_mapping
from platforms.reference_crm.adapter_common import CrmAdapter, expected_version, feed_position, write_each
from platforms.reference_crm.service import MAX_BATCH, ContactWrite, CrmContact, ReferenceCrm
from sync.fields import FieldMap


def _tombstone(external_id: str) -> SideRecord:
    return ContactRecord(side="platform", external_id=external_id, content=None, deleted=True)


class ReferenceCrmContacts(CrmAdapter):
    """PlatformContacts over a ReferenceCrm (or a database URL / engine holding one).

    `field_maps(org_id)` gives an organisation's field mapping (`sync.fields.FieldMap`;
    the worker reads it from the organisation's settings): records are translated
    through it both ways (`field_mapping`), and a write's kept fields with them, on
    the bulk path as on the per-record one.
    """

    def __init__(self, engine_or_url: Engine | str | ReferenceCrm,
                 field_maps: Callable[[str], FieldMap] | None = None, *, batch_size: int = MAX_BATCH) -> None:
        super().__init__(engine_or_url)
        self.field_maps = field_maps or (lambda org_id: FieldMap())
        if not 0 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 0 (one call per record) to {MAX_BATCH}")
        self.batch_size = batch_size

    def _record(self, org_id: str, rec: CrmContact, fmap: FieldMap | None = None) -> SideRecord:
        side = rec.to_side_record()
        if side.content is None:
            return side
        fmap = fmap if fmap is not None else self.field_maps(org_id)
        return side.model_copy(update={"content": field_mapping.from_crm(side.content, fmap)})

    def changes_since(self, org_id: str, cursor: str | None, limit: int = 500) -> DeltaPage:
        """One page of the feed. `cursor` is always set (resume point after this page);
        `next_page` repeats it when the page was full, meaning: call again with it now.
        A cursor this CRM never issued (not a number, negative, or ahead of the feed)
        raises CursorExpired: the caller resyncs instead of missing changes.
        """
        self._count()
        after = feed_position(cursor)
        recs, new_cursor = self.crm.changes_since(org_id, after, limit)
        if not recs and after and after > self.crm.feed_head(org_id):
            raise CursorExpired("cursor ahead of this organisation's feed")
        token = str(new_cursor)
        fmap = self.field_maps(org_id)
        return DeltaPage(
            records=[self._record(org_id, r, fmap) for r in recs],
            next_page=token if len(recs) >= limit else None,
            cursor=token,
        )

    def get_many(self, org_id: str, external_ids: Sequence[str]) -> list[SideRecord]:
        self._count()
        found = self.crm.get_contacts(org_id, external_ids)
        fmap = self.field_maps(org_id)
        return [self._record(org_id, found[i], fmap) if i in found else _tombstone(i) for i in external_ids]

    def upsert_many(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        if self.batch_size:
            return self._upsert_batched(org_id, requests)
        self._count()
        fmap = self.field_maps(org_id)

        def upsert(req: WriteRequest) -> SideRecord:
            if req.content is None:
                raise Fatal("upsert without a contact")
            content = field_mapping.to_crm(req.content, fmap)
            if req.external_id is None:
                rec = self.crm.create_contact(org_id, content, owner_id=req.owner,
                                              idempotency_key=req.key, actor="sync")
            else:
                rec = self.crm.update_contact(org_id, req.external_id, content, owner_id=req.owner,
                                              expected_version=expected_version(req.etag),
                                              idempotency_key=req.key, actor="sync",
                                              keep=field_mapping.keep_on_crm(req.keep, fmap))
            return self._record(org_id, rec, fmap)

        return write_each(requests, upsert)

    def _upsert_batched(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """upsert_many through the bulk endpoint: a request it cannot carry (no contact,
        an etag this CRM never issued) is answered here, as the per-record path would;
        the rest go in calls of up to `batch_size`, each counted as one platform call."""
        share = 1.0 / max(len(requests), 1)
        fmap = self.field_maps(org_id)
        answers: list[WriteResult | None] = [None] * len(requests)
        sendable: list[tuple[int, ContactWrite]] = []
        for pos, req in enumerate(requests):
            try:
                if req.content is None:
                    raise Fatal("upsert without a contact")
                expected = None if req.external_id is None else expected_version(req.etag)
            except (Fatal, PreconditionFailed) as exc:
                answers[pos] = WriteResult(key=req.key, error=exc, calls=share)
                continue
            # what upsert_many's per-record path sends: the CRM's fields and kept fields
            keep = () if req.external_id is None else field_mapping.keep_on_crm(req.keep, fmap)
            sendable.append((pos, ContactWrite(contact=field_mapping.to_crm(req.content, fmap),
                                               contact_id=req.external_id, owner_id=req.owner,
                                               expected_version=expected, idempotency_key=req.key, keep=keep)))
        if not sendable:
            self._count()
        for start in range(0, len(sendable), self.batch_size):
            chunk = sendable[start:start + self.batch_size]
            self._count()
            outcomes = self.crm.write_contacts(org_id, [item for _, item in chunk], actor="sync")
            for (pos, _), outcome in zip(chunk, outcomes, strict=True):
                key = requests[pos].key
                answers[pos] = (WriteResult(key=key, error=outcome, calls=share) if isinstance(outcome, Exception)
                                else WriteResult(key=key, record=self._record(org_id, outcome, fmap), calls=share))
        return [a for a in answers if a is not None]

    def delete_many(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Deletes; an id that is gone (or never existed here) counts as deleted."""
        self._count()

        def delete(req: WriteRequest) -> SideRecord:
            if not req.external_id:
                raise Fatal("delete without an external id")
            try:
                rec = self.crm.delete_contact(org_id, req.external_id, idempotency_key=req.key,
                                              expected_version=expected_version(req.etag), actor="sync")
            except NotFound:
                return _tombstone(req.external_id)
            return self._record(org_id, rec)

        return write_each(requests, delete)
