"""The reference CRM behind `connectors.protocols.PlatformOutbox`.

Concord polls `outbox_since` for items to send, moves each with `set_outgoing_state`
(sending with the Message-ID it chose, then sent / failed / queued / held) and asks
`get_outgoing` before acting on an item it learned about a while ago (a user may have
cancelled it since). Errors are the service's: ValidationRejected for a refused move
(field "state" or "message_id"), NotFound for an unknown item, Transient when the
database is unavailable. Each protocol method counts as one platform call, as an
HTTP endpoint would.
"""

from __future__ import annotations

from typing import Sequence

from sqlalchemy.engine import Engine

from models.errors import CursorExpired
from models.send import OutgoingMessage
from platforms.reference_crm.adapter_common import CrmAdapter, feed_position
from platforms.reference_crm.outbox_service import CrmOutbox
from platforms.reference_crm.service import ReferenceCrm


class ReferenceCrmOutbox(CrmAdapter):
    """PlatformOutbox over a ReferenceCrm (or a database URL / engine holding one)."""

    def __init__(self, engine_or_url: Engine | str | ReferenceCrm) -> None:
        super().__init__(engine_or_url)
        self.outbox: CrmOutbox = self.crm.outbox

    def outbox_since(self, org_id: str, cursor: str | None, limit: int = 500) -> tuple[list[OutgoingMessage], str]:
        """Oldest change first, each item once in its latest state; the cursor returned is
        always set (the resume point, unchanged when nothing is new). A cursor this CRM
        never issued (not a number, negative, or ahead of the outbox) raises
        CursorExpired, so the caller rereads from the start instead of skipping items."""
        self._count()
        after = feed_position(cursor)
        items, last = self.outbox.changes_since(org_id, after, max(int(limit), 1))
        if not items and after > self.outbox.feed_head(org_id):
            raise CursorExpired("cursor ahead of this organisation's outbox")
        return [i.to_message() for i in items], str(last)

    def get_outgoing(self, org_id: str, item_ids: Sequence[str]) -> list[OutgoingMessage]:
        """In the order asked; unknown ids are absent."""
        self._count()
        return [i.to_message() for i in self.outbox.get_many(org_id, item_ids)]

    def set_outgoing_state(self, org_id: str, item_id: str, state: str, *, reason: str | None = None,
                           message_id: str | None = None, provider_message_id: str | None = None,
                           provider_thread_id: str | None = None) -> OutgoingMessage:
        """See outbox_service.CrmOutbox.set_state: the same state twice is one move."""
        self._count()
        return self.outbox.set_state(org_id, item_id, state, reason=reason, message_id=message_id,
                                     provider_message_id=provider_message_id,
                                     provider_thread_id=provider_thread_id).to_message()
