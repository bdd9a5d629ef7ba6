"""A started OAuth connect flow waiting for its callback: the data both sides share.

The OAuth connectors (connectors/oauth_*.py) make and check these; the store keeps
them sealed (store/pending_flows.py). Defined here so the store needs nothing from
the connectors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

#: How long a started flow may wait for its callback.
PENDING_FLOW_TTL = timedelta(minutes=10)


@dataclass
class PendingFlow:
    """Server-side half of a started flow, keyed by its `state`.

    Holds the PKCE verifier, so it is a secret: the store must keep it encrypted
    (e.g. sealed with the vault's key ring) and never log it.
    """

    state: str
    provider: str
    redirect_uri: str
    scopes: tuple[str, ...]
    code_verifier: str
    created_at: float
    #: Caller's context to resume with (org id, user id, requested capabilities...): ids only.
    connection_hint: dict = field(default_factory=dict)
    #: Provider-library state that must survive to the callback (msal's flow dict).
    extra: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        return f"PendingFlow(provider={self.provider!r}, scopes={self.scopes!r}, created_at={self.created_at!r})"


class PendingFlows(Protocol):
    """Where started flows wait for their callback.

    `take` must be atomic (get and delete in one step) so a state is usable once,
    even when two callbacks race. A database implementation: a table
    `oauth_pending_flows(state_hash PRIMARY KEY, payload_sealed, created_at)` with
    `DELETE ... WHERE state_hash = :h RETURNING payload_sealed` (PostgreSQL and
    SQLite >= 3.35 both have RETURNING); store a hash of the state, not the state,
    and purge rows older than the TTL periodically. Expiry is checked by the flow
    code, so an implementation may return expired entries.
    """

    def put(self, flow: PendingFlow) -> None: ...

    def take(self, state: str) -> PendingFlow | None: ...
