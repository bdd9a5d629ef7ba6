"""Erasing a person (GDPR): from Concord's store, from the platform, and, only when
asked, from the connected mailboxes.

The platform's records of the person are found on the platform itself (its full
listing: every live record holding the address) and through the store's links;
they are deleted through the adapter. The mailboxes are left alone unless the policy
is "delete" (disconnect and erase never touch a user's mailbox unless asked): then
each active connection's contacts holding the address, and those linked to the
person's records, are deleted through the connector. Then the store forgets the
person (`store.erase`) and one audit entry records the erase with no personal data:
a keyed hash of the address (the organisation id is the key) and counts.

Re-running an erase finds nothing more and changes nothing: every step is idempotent.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass, field

from connectors.protocols import WriteRequest
from models.errors import ConnectorError
from activities.listing import full_listing
from store import erase as store_erase
from store import repo

MAILBOX_POLICIES = ("keep", "delete")


address_hash = store_erase.address_hash


class EraseFailed(RuntimeError):
    """A side refused a deletion; nothing was removed from the store (run the erase again)."""


@dataclass
class EraseResult:
    address_hash: str
    mailbox_policy: str
    platform_deleted: int = 0
    mailbox_deleted: int = 0
    store: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"address_hash": self.address_hash, "mailbox_policy": self.mailbox_policy,
                "platform_deleted": self.platform_deleted, "mailbox_deleted": self.mailbox_deleted,
                "store": self.store}


def _full_listing(list_page) -> list:
    return list(full_listing(list_page).values())


def _holds(rec, needle: str) -> bool:
    content = rec.content
    return content is not None and needle in {str(e).casefold() for e in getattr(content, "emails", ())}


def erase_person(sessions, platform, mailbox_for, org_id: str, address: str, *, mailbox_policy: str = "keep",
                 kind: str = "contacts") -> EraseResult:
    """Erase the person with this address from the organisation. `platform` is the kind's
    PlatformSide; `mailbox_for(ConnectionInfo)` builds a connection's connector (used only
    with mailbox_policy "delete")."""
    from activities.pipeline import ConnectionInfo

    if mailbox_policy not in MAILBOX_POLICIES:
        raise ValueError(f"mailbox policy is keep or delete, not {mailbox_policy!r}")
    needle = address.strip().casefold()
    if "@" not in needle:
        raise ValueError("an email address is needed")
    result = EraseResult(address_hash=address_hash(org_id, needle), mailbox_policy=mailbox_policy)
    with sessions() as s:
        if repo.get_org(s, org_id) is None:
            raise LookupError(f"no organisation {org_id} in the store")
        found = store_erase.find(s, org_id, needle)
        conns = [r for r in repo.list_connections(s, org_id)]
    # -- the platform: what it holds of the person, read from it, and what links name --
    try:
        on_platform = {r.external_id for r in _full_listing(lambda t: platform.changes_since(org_id, t))
                       if _holds(r, needle)}
    except ConnectorError as exc:
        raise EraseFailed(f"the platform could not be listed: {type(exc).__name__}") from None
    platform_ids = sorted(on_platform | found.ids("platform", kind))
    key = f"erase:{result.address_hash[:16]}:{uuid.uuid4().hex[:8]}"
    if platform_ids:
        res = platform.delete_many(org_id, [WriteRequest(key=f"{key}:{i}", external_id=pid)
                                            for i, pid in enumerate(platform_ids)])
        failed = [r for r in res if r.error is not None]
        if failed:
            raise EraseFailed(f"the platform refused {len(failed)} deletion(s): {type(failed[0].error).__name__}")
        result.platform_deleted = len(platform_ids)
    # -- the mailboxes: only when asked --------------------------------------------------
    if mailbox_policy == "delete":
        for conn in conns:
            if conn.status == "disconnected":
                continue
            info = ConnectionInfo(conn.id, conn.org_id, conn.user_id, conn.provider, conn.account_ref,
                                  dict(conn.settings or {}))
            mailbox = mailbox_for(info)
            try:
                listed = {r.external_id for r in _full_listing(lambda t: mailbox.list_changes(None, t))
                          if _holds(r, needle)}
            except ConnectorError as exc:
                raise EraseFailed(f"mailbox of connection {conn.id} could not be listed: {type(exc).__name__}") \
                    from None
            ids = sorted(listed | {m for (cid, k, side), ms in found.records.items()
                                   if cid == conn.id and k == kind and side == "mailbox" for m in ms})
            if ids:
                res = mailbox.delete_many([WriteRequest(key=f"{key}:{conn.id}:{i}", external_id=mid)
                                           for i, mid in enumerate(ids)])
                failed = [r for r in res if r.error is not None]
                if failed:
                    raise EraseFailed(f"mailbox of connection {conn.id} refused {len(failed)} deletion(s)")
                result.mailbox_deleted += len(ids)
    # -- the store, and the audit entry without personal data -----------------------------
    with sessions.begin() as s:
        result.store = store_erase.purge(s, org_id, needle, found, set(platform_ids))
        store_erase.remember(s, org_id, result.address_hash)
        repo.audit(s, org_id=org_id, op="delete", detail={
            "erase": {"address_sha256": result.address_hash, "mailbox_policy": mailbox_policy,
                      "platform_deleted": result.platform_deleted, "mailbox_deleted": result.mailbox_deleted,
                      "store": result.store}}, at=time.time())
    return result
