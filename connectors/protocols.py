"""The small protocols every mailbox connector and platform adapter implements.

One pair per kind of data, all of the same shape: `MailboxSide[T]` and
`PlatformSide[T]` over the kind's canonical model T (contacts: `Contact`).
Everything crossing these boundaries is a `SideRecord[T]`; failures are the
classes in `models.errors`. Calls are synchronous: activities run them on the
worker's thread pool, and the Google client library (httplib2) is synchronous anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, TypeVar

from models.errors import ConnectorError, Fatal
from models.record import SideRecord

T = TypeVar("T")


@dataclass
class DeltaPage:
    """One page of a delta round.

    `next_page` set: more pages in this round, pass it back unchanged.
    `cursor` set (last page only): the cursor to store for the next round.
    A full listing is a delta round started with cursor None.
    """

    records: list[SideRecord]
    next_page: str | None = None
    cursor: str | None = None


@dataclass
class WriteRequest:
    """One write in a batch. `key` is the caller's idempotency key (our action id)."""

    key: str
    content: Any = None  # the kind's model; None for deletes
    external_id: str | None = None  # None for creates
    etag: str | None = None  # optimistic concurrency, when the side supports it
    #: Opaque marker stored on the created record so a crashed create can be found
    #: again (People clientData, Graph extended property, CRM idempotency key).
    marker: str | None = None
    owner: str | None = None
    #: fields to leave as the side holds them (see `sync.fields.keep_for`); `custom:<name>` is one custom field
    keep: tuple[str, ...] = ()

    def malformed(self, op: str) -> Fatal | None:
        """What this request lacks for `op` (create / update / delete): a caller bug.

        Connectors report it as this item's error and carry on with the others.
        """
        if op != "delete" and self.content is None:
            return Fatal(f"{op} request without content")
        if op != "create" and not self.external_id:
            return Fatal(f"{op} request without an external id")
        return None


@dataclass
class WriteResult:
    key: str
    record: SideRecord | None = None
    error: ConnectorError | None = None
    # Provider calls this result cost (for "calls per contact" figures).
    calls: float = field(default=1.0)


class MailboxSide(Protocol[T]):
    """One kind's records in one connected mailbox (contacts: Google People, Microsoft
    Graph, CardDAV)."""

    provider: str

    def list_changes(self, cursor: str | None, page_token: str | None = None) -> DeltaPage:
        """A page of changes since `cursor` (None: full listing that yields a new cursor).

        Raises CursorExpired when the cursor is no longer accepted.
        """

    def get(self, external_id: str) -> SideRecord:
        """Current state of one contact (for re-merge after PreconditionFailed)."""

    def find_by_markers(self, markers: Sequence[str], heartbeat: Callable[[], None] = lambda: None) -> dict[str, SideRecord]:
        """Contacts we created earlier, by their marker (crash recovery of creates).

        Markers not found are absent from the answer. Cost is bounded per call, not
        per marker (one listing at most), so resuming many interrupted creates stays
        cheap. `heartbeat` is called on the caller's thread after each provider call,
        so a long scan keeps its Temporal activity alive.
        """

    def find_by_marker(self, marker: str) -> SideRecord | None:
        """`find_by_markers([marker]).get(marker)`; kept while callers move to the batch form."""

    def create_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Create contacts; one result per request, in order. Per-item errors, not raised."""

    def update_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Replace the synced fields of existing contacts; per-item errors."""

    def delete_many(self, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Delete contacts; an already-missing contact counts as deleted."""

    @property
    def calls_made(self) -> int:
        """Provider HTTP calls made by this instance (for benchmarks and spans)."""


class PlatformSide(Protocol[T]):
    """One kind's records on the business platform (CRM, ATS, PM tool), by organisation."""

    def changes_since(self, org_id: str, cursor: str | None, limit: int = 500) -> DeltaPage:
        """Changes (including deletions) after `cursor`, oldest first.

        Raises CursorExpired for a cursor the platform does not accept (expired, or
        never issued by it), so the caller resyncs rather than skipping changes.
        """

    def get_many(self, org_id: str, external_ids: Sequence[str]) -> list[SideRecord]:
        """Current records; missing ids are returned as deleted tombstones."""

    def upsert_many(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Create (external_id None) or update; idempotent by `WriteRequest.key`.

        A record the platform refuses comes back with a ValidationRejected error.
        """

    def delete_many(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Delete records; idempotent."""


#: the contacts kind's pair
MailboxContacts = MailboxSide
PlatformContacts = PlatformSide


class MailboxMail(Protocol):
    """A connected mailbox's mail, read-only (Gmail history, Graph messages delta).

    `list_changes` has the contract of `MailboxSide.list_changes`; its records are
    `SideRecord[MailMessage]` keyed by the provider's (immutable) message id, and a
    permanently deleted message is a tombstone. Trash is a label ("TRASH") / folder
    change, reported as an update. What it fetches follows `MailFetchOptions` (built
    by the connector's factory): in metadata-only mode no body is ever requested.
    Raises CursorExpired when the provider forgot the cursor (Gmail 404, Graph 410):
    the caller lists again within the backfill window.
    """

    provider: str

    def list_changes(self, cursor: str | None, page_token: str | None = None) -> DeltaPage: ...

    def get(self, external_id: str) -> SideRecord: ...

    @property
    def calls_made(self) -> int: ...


class PlatformMail(Protocol):
    """What the mail kind needs from a platform (reference: platforms/reference_crm).

    Lookups answer for many keys in one call; writes take a batch and answer per item
    (a ValidationRejected error for one item never fails the others). Every write is
    idempotent by its key, so a retried activity changes nothing twice.
    """

    def people_by_email(self, org_id: str, emails: Sequence[str]) -> dict[str, list[Any]]:
        """Contacts and leads (`models.mail_log.Person`) holding each address, secondary
        addresses included; addresses nobody holds are absent."""

    def accounts_by_domain(self, org_id: str, domains: Sequence[str]) -> dict[str, list[Any]]:
        """Accounts (`AccountRef`) whose domain is each of `domains`."""

    def open_opportunities(self, org_id: str, contact_ids: Sequence[str]) -> dict[str, list[Any]]:
        """Open opportunities (`OpportunityRef`) each contact holds a role on."""

    def custom_associations(self, org_id: str, message: Any, people: Sequence[Any]) -> list[Any]:
        """The adapter's hook for custom objects: extra `Association`s for a message."""

    def create_people(self, org_id: str, requests: Sequence[WriteRequest]) -> list[WriteResult]:
        """Create leads or contacts (`NewPerson` content); idempotent by key. The result's
        record is a SideRecord whose external_id is the new person's id."""

    def log_emails(self, org_id: str, logs: Sequence[Any]) -> list[WriteResult]:
        """Create or extend email activities (`EmailLog`), by `EmailLog.key`: a key seen
        before adds users and associations and lowers visibility to the most restrictive;
        the result's record external_id is the activity id."""

    def remove_emails(self, org_id: str, keys: Sequence[str]) -> list[WriteResult]:
        """Remove logged activities (deletion policy "remove"); a missing one counts as removed."""

    def conversions_since(self, org_id: str, cursor: str | None, limit: int = 500) -> tuple[list[Any], str | None]:
        """Lead conversions (`Conversion`) after `cursor`, oldest first, and the next cursor."""

    def move_emails(self, org_id: str, lead_id: str, to: Sequence[Any]) -> int:
        """Re-attach every activity associated with a converted lead to `to` (Associations);
        idempotent; returns how many activities moved."""


class MailboxSend(Protocol):
    """Sending through a connected mailbox (Gmail `messages.send`; Graph draft then send).

    `raw` is the complete RFC 5322 message Concord built (stdlib `email`), carrying the
    Message-ID it chose and, for a reply, In-Reply-To and References. The connector keeps
    that Message-ID: it is how `find_sent` recognises a message an earlier attempt sent.
    Permanent refusals raise `models.errors.SendRejected` (with its reason); rate limits
    RateLimited; anything else that may or may not have sent raises Transient, and the
    caller looks in Sent before trying again.
    """

    provider: str

    def send(self, raw: bytes, *, reply_to_message_id: str | None = None) -> Any:
        """Send; returns `models.send.SentRef`. For a reply, `reply_to_message_id` (the
        parent's normalised Message-ID) lets the provider thread it (Gmail threadId)."""

    def find_sent(self, message_id: str) -> Any:
        """The `SentRef` of the message with this Message-ID in the mailbox's Sent items
        (Gmail `rfc822msgid:`, Graph `internetMessageId` filter), or None."""


class PlatformOutbox(Protocol):
    """A platform's outbox (reference: platforms/reference_crm). Items are reported in a
    feed like records; state changes are idempotent (the same state twice is one)."""

    def outbox_since(self, org_id: str, cursor: str | None, limit: int = 500) -> tuple[list[Any], str | None]:
        """Outbox items (`OutgoingMessage`) queued or changed after `cursor`, oldest first,
        and the next cursor; CursorExpired for a cursor it never issued."""

    def get_outgoing(self, org_id: str, item_ids: Sequence[str]) -> list[Any]:
        """Current state of these items; unknown ids are absent."""

    def set_outgoing_state(self, org_id: str, item_id: str, state: str, *, reason: str | None = None,
                           message_id: str | None = None, provider_message_id: str | None = None,
                           provider_thread_id: str | None = None) -> Any:
        """Move an item to `state` (see models.send.OutboxState); returns the item. A sent or
        failed item is final: a later move is refused with ValidationRejected."""
