"""Started OAuth flows waiting for their callback, kept in the store's `pending_oauth` table.

Why it is built this way:

- Any API replica may receive the callback of a flow another one started, so the
  pending half of the flow lives in the database, not in process memory.
- The row key is a SHA-256 of the `state`, not the state itself: a database dump
  does not hand out live states that could be replayed against the callback.
- The whole `PendingFlow` (PKCE verifier, msal's flow dict with its nonce) is a
  secret. It is sealed with the vault's key ring (AES-256-GCM, the hashed state as
  associated data, so a sealed payload moved onto another row fails to open) and
  stored in the table's `code_verifier` column; the column keeps its name from the
  initial migration, the value is `<key id>:<base64(nonce + ciphertext)>`.
- `take` is one `DELETE ... RETURNING`: a state is usable once even when two
  callbacks race. Expired rows are still returned so the flow code can say
  "expired, start again" rather than "unknown state"; `put` purges old rows.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from datetime import timedelta
from typing import Callable

from models.oauth import PENDING_FLOW_TTL, PendingFlow
from store import repo
from store.vault import KeyRing, VaultDecryptError

_AAD_PREFIX = b"concord-pending-oauth/v1:"
NONCE_BYTES = 12


def state_key(state: str) -> str:
    return hashlib.sha256(state.encode("utf-8")).hexdigest()


class StorePendingFlows:
    """`models.oauth.PendingFlows` over the store (see module docstring)."""

    def __init__(
        self,
        sessions,
        keyring: KeyRing,
        *,
        ttl: timedelta = PENDING_FLOW_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._ttl = ttl.total_seconds()
        self._clock = clock

    def __repr__(self) -> str:
        return f"StorePendingFlows(ttl={self._ttl!r})"

    # -- sealing

    def _seal(self, key: str, flow: PendingFlow) -> str:
        payload = json.dumps(
            {
                "state": flow.state,
                "provider": flow.provider,
                "redirect_uri": flow.redirect_uri,
                "scopes": list(flow.scopes),
                "code_verifier": flow.code_verifier,
                "created_at": flow.created_at,
                "connection_hint": flow.connection_hint,
                "extra": flow.extra,
            },
            separators=(",", ":"),
        ).encode("utf-8")
        key_id = self._keyring.active_key_id
        nonce = os.urandom(NONCE_BYTES)
        ct = self._keyring.aead(key_id).encrypt(nonce, payload, _AAD_PREFIX + key.encode())
        return f"{key_id}:{base64.b64encode(nonce + ct).decode('ascii')}"

    def _open(self, key: str, sealed: str) -> PendingFlow:
        key_id, _, b64 = sealed.partition(":")
        raw = base64.b64decode(b64)
        try:
            plain = self._keyring.aead(key_id).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _AAD_PREFIX + key.encode())
        except Exception:
            raise VaultDecryptError("a pending OAuth flow failed authentication (tampered or moved)") from None
        d = json.loads(plain)
        return PendingFlow(
            state=d["state"],
            provider=d["provider"],
            redirect_uri=d["redirect_uri"],
            scopes=tuple(d["scopes"]),
            code_verifier=d["code_verifier"],
            created_at=float(d["created_at"]),
            connection_hint=d.get("connection_hint") or {},
            extra=d.get("extra") or {},
        )

    # -- PendingFlows

    def put(self, flow: PendingFlow) -> None:
        hint = flow.connection_hint or {}
        key = state_key(flow.state)
        sealed = self._seal(key, flow)
        now = self._clock()
        with self._sessions.begin() as s:
            repo.purge_expired_oauth(s, now=now)
            # A transient token-endpoint failure puts the same flow back: replace it.
            repo.take_pending_oauth(s, key, now=float("-inf"))
            repo.put_pending_oauth(
                s,
                state=key,
                provider=flow.provider,
                org_id=str(hint.get("org_id") or ""),
                user_id=str(hint.get("user_id") or ""),
                code_verifier=sealed,
                redirect_uri=flow.redirect_uri,
                ttl=self._ttl,
            )

    def take(self, state: str) -> PendingFlow | None:
        if not state:
            return None
        key = state_key(state)
        with self._sessions.begin() as s:
            # now=-inf: hand back expired rows too (consumed either way); the flow
            # code checks `created_at` and answers "expired" instead of "unknown".
            row = repo.take_pending_oauth(s, key, now=float("-inf"))
        if row is None:
            return None
        return self._open(key, row.code_verifier)
