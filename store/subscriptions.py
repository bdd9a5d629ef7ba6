"""Push subscriptions: the records a webhook is authenticated against.

A notification names its subscription (Graph `subscriptionId`, Calendar
`X-Goog-Channel-ID`, the Gmail address inside a Pub/Sub message) and carries the
secret we gave the provider when subscribing (Graph `clientState`, Calendar
channel `token`). Only the sha256 of that secret is stored: a leaked database
does not let anyone forge notifications, and the comparison is constant-time.

Gmail watches carry no per-watch secret (the Pub/Sub push endpoint is
authenticated as a whole), and their key is the sha256 of the lowercased address,
so the address itself is never stored or looked up in clear.

Renewal: Graph subscriptions live at most 10,080 minutes, Gmail watches 7 days,
Calendar channels until their `expiration`; `due_for_renewal` lists what a
renewal job must refresh, including those Graph flagged `reauthorizationRequired`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from models.errors import Fatal, PreconditionFailed
from store.schema import SUBSCRIPTION_PROVIDERS, SUBSCRIPTION_STATUSES, subscriptions

#: Graph caps clientState at 128 characters; 32 random bytes urlsafe-encode to 43.
SECRET_BYTES = 32


@dataclass(frozen=True)
class NewSubscription:
    """What `create_subscription` hands back: the secret exists in clear only here."""

    id: str
    secret: str | None


def new_secret() -> str:
    """A clientState / channel token; send it to the provider, then store its hash."""
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def secret_matches(row: Row, presented: str | None) -> bool:
    """Constant-time check of a presented secret against the stored hash.

    A row without a stored hash (Gmail) matches nothing here: those are
    authenticated at the endpoint, not per subscription.
    """
    stored = row.client_state_hash
    if not stored or presented is None:
        return False
    return hmac.compare_digest(hash_secret(str(presented)).encode(), str(stored).encode())


def email_key(address: str) -> str:
    """The Gmail watch key: the sha256 of the trimmed, lowercased address."""
    return hashlib.sha256(address.strip().lower().encode("utf-8")).hexdigest()


def _check(value: str, allowed: Iterable[str], what: str) -> str:
    if value not in allowed:
        raise Fatal(f"unknown {what}: {value!r}")
    return value


def create_subscription(
    s: Session,
    *,
    connection_id: str,
    provider: str,
    external_id: str,
    resource: str,
    expires_at: float | None,
    secret: str | None = None,
    generate_secret: bool = True,
) -> NewSubscription:
    """Record a subscription and return its secret, in clear, this once.

    Graph assigns the subscription id only after it has been sent the clientState,
    so a caller may pass the `secret` it already used (from `new_secret()`);
    otherwise one is generated (Calendar: create the row, then watch with the
    returned token). `generate_secret=False` stores no secret (Gmail).

    Re-subscribing the same (provider, external_id) for the same connection
    replaces the old row (a fresh Gmail watch, a re-created channel); the same key
    held by another connection that is still active raises PreconditionFailed.
    """
    _check(provider, SUBSCRIPTION_PROVIDERS, "subscription provider")
    if secret is None and generate_secret:
        secret = new_secret()
    now = time.time()
    existing = find_by_external_id(s, provider, external_id)
    if existing is not None:
        if existing.connection_id != connection_id and existing.status != "removed":
            raise PreconditionFailed(f"{provider} subscription key already held by another connection")
        s.execute(sa.delete(subscriptions).where(subscriptions.c.id == existing.id))
    sub_id = str(uuid.uuid4())
    s.execute(
        sa.insert(subscriptions).values(
            id=sub_id,
            connection_id=connection_id,
            provider=provider,
            external_id=external_id,
            resource=resource,
            client_state_hash=hash_secret(secret) if secret is not None else None,
            expires_at=expires_at,
            status="active",
            created_at=now,
            updated_at=now,
        )
    )
    return NewSubscription(sub_id, secret)


def get_subscription(s: Session, sub_id: str) -> Row | None:
    return s.execute(sa.select(subscriptions).where(subscriptions.c.id == sub_id)).first()


def find_by_external_id(s: Session, provider: str, external_id: str) -> Row | None:
    return s.execute(
        sa.select(subscriptions).where(
            subscriptions.c.provider == provider, subscriptions.c.external_id == external_id
        )
    ).first()


def find_by_external_ids(s: Session, provider: str, external_ids: Iterable[str]) -> dict[str, Row]:
    """One query for a whole notification batch (Graph sends several per POST)."""
    ids = sorted(set(external_ids))
    if not ids:
        return {}
    rows = s.execute(
        sa.select(subscriptions).where(
            subscriptions.c.provider == provider, subscriptions.c.external_id.in_(ids)
        )
    )
    return {r.external_id: r for r in rows}


def mark_status(s: Session, sub_id: str, status: str) -> bool:
    _check(status, SUBSCRIPTION_STATUSES, "subscription status")
    res = s.execute(
        sa.update(subscriptions)
        .where(subscriptions.c.id == sub_id)
        .values(status=status, updated_at=time.time())
    )
    return res.rowcount > 0


def set_expiry(s: Session, sub_id: str, expires_at: float | None, *, reactivate: bool = True) -> bool:
    """Record a renewal; a renewed subscription flagged needs_renewal is active again.

    A removed one stays removed: the provider dropped it and only a new
    subscription brings notifications back.
    """
    values: dict = {"expires_at": expires_at, "updated_at": time.time()}
    q = sa.update(subscriptions).where(subscriptions.c.id == sub_id)
    if reactivate:
        values["status"] = sa.case((subscriptions.c.status == "needs_renewal", "active"), else_=subscriptions.c.status)
    res = s.execute(q.values(**values))
    return res.rowcount > 0


def due_for_renewal(s: Session, before_ts: float, provider: str | None = None) -> list[Row]:
    """Subscriptions expiring before `before_ts`, and every one flagged needs_renewal.

    Removed ones are not listed: renewing them fails at the provider; the owner
    re-subscribes instead.
    """
    q = (
        sa.select(subscriptions)
        .where(
            sa.or_(
                subscriptions.c.status == "needs_renewal",
                sa.and_(
                    subscriptions.c.status == "active",
                    subscriptions.c.expires_at.is_not(None),
                    subscriptions.c.expires_at < before_ts,
                ),
            )
        )
        .order_by(subscriptions.c.expires_at, subscriptions.c.id)
    )
    if provider is not None:
        q = q.where(subscriptions.c.provider == provider)
    return list(s.execute(q))


def list_for_connection(s: Session, connection_id: str, status: str | None = None) -> list[Row]:
    q = (
        sa.select(subscriptions)
        .where(subscriptions.c.connection_id == connection_id)
        .order_by(subscriptions.c.created_at, subscriptions.c.id)
    )
    if status is not None:
        q = q.where(subscriptions.c.status == status)
    return list(s.execute(q))


def delete_for_connection(s: Session, connection_id: str) -> int:
    """Forget a disconnected mailbox's subscriptions (stop them at the provider first)."""
    res = s.execute(sa.delete(subscriptions).where(subscriptions.c.connection_id == connection_id))
    return res.rowcount
