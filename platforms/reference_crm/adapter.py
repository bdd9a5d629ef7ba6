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
"""

from __future__ import annotations

from typing import Callable, Sequence

from models.errors import CursorExpired, Fatal, NotFound, PreconditionFailed
from connectors.protocols import DeltaPage, WriteRequest, WriteResult
from models.contact import ContactRecord
from models.record import SideRecord
from platforms.reference_crm import field_mapping
from platforms.reference_crm.adapter_common import CrmAdapter, feed_position, write_each
from platforms.reference_crm.service import CrmContact, ReferenceCrm
from sync.fields import FieldMap
from sqlalchemy.engine import Engine


def _tombstone(external_id: str) -> SideRecord:
    return ContactRecord(side="platform", external_id=external_id, content=None, deleted=True)


def _expected_version(etag: str | None) -> int | None:
    if etag is None:
        return None
    try:
        return int(etag)
    except ValueError:
        # An etag we never issued cannot match the current version.
        raise PreconditionFailed("etag not recognised") from None


class ReferenceCrmContacts(CrmAdapter):
    """PlatformContacts over a ReferenceCrm (or a database URL / engine holding one).

    `field_maps(org_id)` gives an organisation's field mapping (`sync.fields.FieldMap`;
    the worker reads it from the organisation's settings): records are translated
    through it both ways (`field_mapping`), and a write's kept fields with them.
    """

    def __init__(self, engine_or_url: Engine | str | ReferenceCrm,
                 field_maps: Callable[[str], FieldMap] | None = None) -> None:
        super().__init__(engine_or_url)
        self.field_maps = field_maps or (lambda org_id: FieldMap())

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
                                              expected_version=_expected_version(req.etag),
                                              idempotency_key=req.key, actor="sync",
                                              keep=field_mapping.keep_on_crm(req.keep, fmap))
            return self._record(org_id, rec, fmap)

        return write_each(requests, upsert)

    def delete_many(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Deletes; an id that is gone (or never existed here) counts as deleted."""
        self._count()

        def delete(req: WriteRequest) -> SideRecord:
            if not req.external_id:
                raise Fatal("delete without an external id")
            try:
                rec = self.crm.delete_contact(org_id, req.external_id, idempotency_key=req.key,
                                              expected_version=_expected_version(req.etag), actor="sync")
            except NotFound:
                return _tombstone(req.external_id)
            return self._record(org_id, rec)

        return write_each(requests, delete)
