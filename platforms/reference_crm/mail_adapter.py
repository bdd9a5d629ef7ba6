"""The reference CRM behind `connectors.protocols.PlatformMail`.

Error mapping follows the contacts adapter (adapter.py): what is wrong with one item
(a validation rule, a reused idempotency key) comes back in that item's
WriteResult.error; the database failing raises Transient so the activity retries the
whole batch, which the keys make harmless. Each protocol method counts as one
platform call, as a batch endpoint would.

What the write results hold:
- create_people: `SideRecord[Person]` with external_id = the person's id and content
  the Person as the CRM holds it. When the address already belonged to someone, that
  person comes back (possibly of the other kind: a contact for a lead request) and
  `etag` is "existing"; a person created by this call has etag "created".
- log_emails: `SideRecord[LoggedEmail]` with external_id = the activity id and content
  a LoggedEmail telling whether this call created the activity and the visibility
  the activity has now (after lowering to the most restrictive level); etag is the
  visibility too, for callers that look at the record only.
- remove_emails: a tombstone (deleted=True) whose external_id is the removed
  activity's id, or the key itself when no activity had it.

Mail going the other way (messages CRM users queue for Concord to send from their
mailbox) is a protocol of its own, PlatformOutbox: `ReferenceCrmOutbox` in
outbox_adapter.py, over the same ReferenceCrm (`crm.outbox`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from sqlalchemy.engine import Engine

from connectors.protocols import WriteRequest, WriteResult
from models.errors import ConnectorError, CursorExpired, Fatal
from models.mail_log import AccountRef, Association, Conversion, EmailLog, NewPerson, OpportunityRef, Person
from models.record import SideRecord
from platforms.reference_crm.adapter_common import CrmAdapter, feed_position, write_each
from platforms.reference_crm.mail_service import CrmMail
from platforms.reference_crm.service import ReferenceCrm

#: (org_id, message, people) -> extra associations; a product team's custom objects
CustomHook = Callable[[str, Any, Sequence[Any]], Sequence[Association]]


class ReferenceCrmMail(CrmAdapter):
    """PlatformMail over a ReferenceCrm (or a database URL / engine holding one)."""

    def __init__(self, engine_or_url: Engine | str | ReferenceCrm, *, custom_associations: CustomHook | None = None,
                 ) -> None:
        super().__init__(engine_or_url)
        self.mail: CrmMail = self.crm.mail
        self._custom = custom_associations

    # ---------------------------------------------------------------- lookups

    def people_by_email(self, org_id: str, emails: Sequence[str]) -> dict[str, list[Person]]:
        """Matched case-insensitively against every address of live contacts and open leads."""
        self._count()
        return self.mail.people_by_email(org_id, emails)

    def accounts_by_domain(self, org_id: str, domains: Sequence[str]) -> dict[str, list[AccountRef]]:
        """Keyed by the domain lower-cased; each AccountRef carries the account's own domain."""
        self._count()
        return self.mail.accounts_by_domains(org_id, domains)

    def open_opportunities(self, org_id: str, contact_ids: Sequence[str]) -> dict[str, list[OpportunityRef]]:
        self._count()
        return self.mail.open_opportunities(org_id, contact_ids)

    def custom_associations(self, org_id: str, message: Any, people: Sequence[Any]) -> list[Association]:
        """The reference CRM has no custom objects: [] unless a hook was given at construction."""
        if self._custom is None:
            return []
        return [Association.model_validate(a) for a in self._custom(org_id, message, people)]

    # ---------------------------------------------------------------- writes

    def create_people(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Idempotent by WriteRequest.key. An address someone already holds yields that
        person's id (etag "existing") rather than a duplicate person."""
        self._count()

        def create(req: WriteRequest) -> SideRecord:
            if req.content is None:
                raise Fatal("create request without a person")
            new = NewPerson.model_validate(req.content)
            if req.owner and not new.owner:
                new = new.model_copy(update={"owner": req.owner})
            person, created = self.mail.create_person(org_id, new, idempotency_key=req.key, actor="sync")
            return SideRecord[Person](side="platform", external_id=person.id, content=person,
                                      etag="created" if created else "existing", owner=person.owner)

        return write_each(requests, create)

    def log_emails(self, org_id: str, logs: Sequence[EmailLog]) -> list[WriteResult]:
        """One transaction, one savepoint per item: a rejected item fails alone. See the
        module docstring for what the record holds."""
        self._count()
        items = [EmailLog.model_validate(x) for x in logs]
        share = 1.0 / max(len(items), 1)
        results: list[WriteResult] = []
        for log, outcome in zip(items, self.mail.log_emails(org_id, items)):
            if isinstance(outcome, ConnectorError):
                results.append(WriteResult(key=log.key, error=outcome, calls=share))
                continue
            rec = SideRecord(side="platform", external_id=outcome.activity_id, content=outcome,
                             etag=outcome.visibility)
            results.append(WriteResult(key=log.key, record=rec, calls=share))
        return results

    def remove_emails(self, org_id: str, keys: Sequence[str]) -> list[WriteResult]:
        self._count()
        share = 1.0 / max(len(keys), 1)
        removed = self.mail.remove_emails(org_id, keys)
        return [WriteResult(key=k, record=SideRecord(side="platform", external_id=aid or k, deleted=True),
                            calls=share) for k, aid in zip(keys, removed)]

    # ---------------------------------------------------------------- conversions

    def conversions_since(self, org_id: str, cursor: str | None, limit: int = 500) -> tuple[list[Conversion], str]:
        """Oldest first; the cursor returned is always set (resume point). A cursor this CRM
        never issued (not a number, negative, or ahead of the feed) raises CursorExpired."""
        self._count()
        after = feed_position(cursor)
        found, last = self.mail.conversions_since(org_id, after, limit)
        if not found and after > self.mail.conversions_head(org_id):
            raise CursorExpired("cursor ahead of this organisation's conversions")
        return found, str(last)

    def move_emails(self, org_id: str, lead_id: str, to: Sequence[Any]) -> int:
        self._count()
        return self.mail.move_emails(org_id, lead_id, [Association.model_validate(a) for a in to])
