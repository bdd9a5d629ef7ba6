"""Access and refresh tokens, encrypted at rest (DESIGN: Security).

Why it is built this way:

- AES-256-GCM with a fresh 12-byte random nonce per encryption: authenticated, so a
  flipped bit in the database is an error, never a silently wrong token.
- The associated data names the connection and the token kind, so a ciphertext
  copied onto another row (another user's connection, or the access slot of the
  same one) fails authentication instead of handing out someone else's token.
- The keys live apart from the database (environment or a file mounted from a
  secret store); a row carries only the *id* of the key that sealed it. A stolen
  database dump is useless without the key ring.
- Rotation without downtime: the ring holds the active key first and older keys
  after it. Every key in the ring decrypts; only the active key encrypts.
  `rotate()` re-seals old rows in small batches, each its own short transaction,
  while readers keep working. Drop an old key from the ring only once `rotate()`
  has reported zero remaining rows for it.

The table lives on its own `vault_metadata` so the store's migrations can include
it without this module depending on the rest of the schema.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Union

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.orm import Session

import settings
from models.errors import Fatal

ENV_VAR = "CONCORD_VAULT_KEYS"
KEY_BYTES = 32
NONCE_BYTES = 12
_AAD_VERSION = "concord-vault/v1"
_KEY_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")

ACCESS = "access"
REFRESH = "refresh"
KINDS = (ACCESS, REFRESH)


class VaultError(Fatal):
    """The vault cannot do what was asked; retrying the same call will not help."""

    code = "vault_error"


class VaultKeyMissing(VaultError):
    """A row was sealed with a key that is not in the ring (dropped too early, wrong env)."""

    code = "vault_key_missing"


class VaultDecryptError(VaultError):
    """A ciphertext failed authentication: tampered, truncated, or moved to another row."""

    code = "vault_decrypt_failed"


class VaultConfigError(VaultError):
    """The key ring configuration is malformed."""

    code = "vault_config"


# --------------------------------------------------------------------------- keys


def generate_key() -> str:
    """A new random 256-bit key, base64-encoded, ready for `CONCORD_VAULT_KEYS`."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


class KeyRing:
    """Named AES-256 keys; the first one is the one new ciphertexts are sealed with."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise VaultConfigError("the vault key ring is empty")
        self._keys: dict[str, bytes] = {}
        for key_id, key in keys:
            if not _KEY_ID_RE.match(key_id):
                raise VaultConfigError(f"invalid vault key id {key_id!r} (letters, digits, _ . -; max 32)")
            if len(key) != KEY_BYTES:
                raise VaultConfigError(f"vault key {key_id!r} must be {KEY_BYTES} bytes, got {len(key)}")
            if key_id in self._keys:
                raise VaultConfigError(f"vault key id {key_id!r} appears twice")
            self._keys[key_id] = key
        self.active_key_id = keys[0][0]

    def __repr__(self) -> str:  # never the key material
        return f"KeyRing(active={self.active_key_id!r}, ids={list(self._keys)!r})"

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def aead(self, key_id: str) -> AESGCM:
        try:
            return AESGCM(self._keys[key_id])
        except KeyError:
            raise VaultKeyMissing(
                f"vault key {key_id!r} is not in the key ring (known: {', '.join(self._keys)}); "
                "was it removed before rotation finished?"
            ) from None

    @classmethod
    def parse(cls, text: str) -> "KeyRing":
        """`id:base64` entries separated by commas or newlines; `#` starts a comment line."""
        entries: list[tuple[str, bytes]] = []
        for raw in re.split(r"[,\n]", text):
            item = raw.strip()
            if not item or item.startswith("#"):
                continue
            key_id, sep, b64 = item.partition(":")
            if not sep:
                raise VaultConfigError("vault key entries must look like 'id:base64key'")
            try:
                key = base64.b64decode(b64.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise VaultConfigError(f"vault key {key_id.strip()!r} is not valid base64") from None
            entries.append((key_id.strip(), key))
        return cls(entries)

    @classmethod
    def from_env(cls, config: settings.Settings | None = None) -> "KeyRing":
        """The key ring in CONCORD_VAULT_KEYS (`config`, else the settings as the environment has them)."""
        secret = (config or settings.load()).vault_keys
        if secret is None:
            raise VaultConfigError(f"{ENV_VAR} is not set (expected 'k2:<base64>,k1:<base64>')")
        return cls.parse(secret.get_secret_value())

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "KeyRing":
        """A file mounted from a secret store; same format as the environment variable."""
        return cls.parse(Path(path).read_text(encoding="ascii"))


# --------------------------------------------------------------------------- table

vault_metadata = sa.MetaData()

vault_tokens = sa.Table(
    "vault_tokens",
    vault_metadata,
    sa.Column("connection_id", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("key_id", sa.String(32), nullable=False, index=True),
    sa.Column("nonce", sa.LargeBinary(), nullable=False),
    sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('access', 'refresh')", name="ck_vault_tokens_kind"),
)


# --------------------------------------------------------------------------- values


def _utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything here is UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


@dataclass(frozen=True)
class TokenSet:
    """The tokens of one connection. `repr` never shows them (they end up in logs and tracebacks)."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    scopes: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"TokenSet(access_token=<hidden>, refresh_token={'<hidden>' if self.refresh_token else None}, "
            f"expires_at={self.expires_at!r}, scopes={self.scopes!r})"
        )

    __str__ = __repr__

    def expired(self, now: datetime | None = None, leeway_seconds: float = 60) -> bool:
        if self.expires_at is None:
            return False
        now = now or datetime.now(timezone.utc)
        return (self.expires_at - now).total_seconds() <= leeway_seconds


Bind = Union[sa.Engine, sa.Connection, Session, None]


def _aad(connection_id: str, kind: str) -> bytes:
    return json.dumps([_AAD_VERSION, connection_id, kind], separators=(",", ":")).encode()


class TokenVault:
    """Sealed token storage keyed by connection id.

    Each method takes an optional `bind`: a Connection or Session joins the caller's
    transaction (the caller commits); without it the vault runs its own short one.
    """

    def __init__(self, engine: sa.Engine, keyring: KeyRing) -> None:
        self.engine = engine
        self.keyring = keyring

    def create_table(self) -> None:
        """For tests and the embedded default; production creates it through migrations."""
        vault_metadata.create_all(self.engine)

    # -- crypto

    def _seal(self, connection_id: str, kind: str, plaintext: str) -> tuple[str, bytes, bytes]:
        key_id = self.keyring.active_key_id
        nonce = os.urandom(NONCE_BYTES)
        ct = self.keyring.aead(key_id).encrypt(nonce, plaintext.encode("utf-8"), _aad(connection_id, kind))
        return key_id, nonce, ct

    def _open(self, connection_id: str, kind: str, key_id: str, nonce: bytes, ciphertext: bytes) -> str:
        aead = self.keyring.aead(key_id)
        try:
            return aead.decrypt(bytes(nonce), bytes(ciphertext), _aad(connection_id, kind)).decode("utf-8")
        except InvalidTag:
            # Ids only: never the ciphertext or anything derived from it.
            raise VaultDecryptError(
                f"{kind} token of connection {connection_id!r} failed authentication "
                f"(key {key_id!r}): tampered, corrupted, or copied from another row"
            ) from None

    # -- transactions

    @contextmanager
    def _tx(self, bind: Bind) -> Iterator[sa.Connection | Session]:
        if bind is None:
            bind = self.engine
        if isinstance(bind, sa.Engine):
            with bind.begin() as conn:
                yield conn
        else:
            yield bind

    def _upsert(self, conn, row: dict) -> None:
        dialect = conn.bind.dialect.name if isinstance(conn, Session) else conn.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:  # pragma: no cover - only the two supported stores
            raise VaultError(f"unsupported database dialect {dialect!r}")
        stmt = insert(vault_tokens).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[vault_tokens.c.connection_id, vault_tokens.c.kind],
            set_={k: stmt.excluded[k] for k in ("key_id", "nonce", "ciphertext", "expires_at", "updated_at")},
        )
        conn.execute(stmt)

    # -- API

    def put(
        self,
        connection_id: str,
        access_token: str,
        refresh_token: str | None,
        expires_at: datetime | None,
        *,
        refresh_expires_at: datetime | None = None,
        bind: Bind = None,
    ) -> None:
        """Store the tokens of a connection.

        `refresh_token=None` keeps the stored refresh token: Google answers a refresh
        without a new one unless rotation is on, and losing the old one would force
        the user through consent again.
        """
        if not access_token:
            raise VaultError("refusing to store an empty access token")
        now = datetime.now(timezone.utc)
        tokens = [(ACCESS, access_token, _utc(expires_at))]
        if refresh_token:
            tokens.append((REFRESH, refresh_token, _utc(refresh_expires_at)))
        with self._tx(bind) as conn:
            for kind, value, exp in tokens:
                key_id, nonce, ct = self._seal(connection_id, kind, value)
                self._upsert(
                    conn,
                    dict(
                        connection_id=connection_id,
                        kind=kind,
                        key_id=key_id,
                        nonce=nonce,
                        ciphertext=ct,
                        expires_at=exp,
                        updated_at=now,
                    ),
                )

    def put_tokens(self, connection_id: str, tokens: TokenSet, *, bind: Bind = None) -> None:
        self.put(connection_id, tokens.access_token, tokens.refresh_token, tokens.expires_at, bind=bind)

    def get(self, connection_id: str, *, bind: Bind = None) -> TokenSet | None:
        with self._tx(bind) as conn:
            rows = conn.execute(
                sa.select(vault_tokens).where(vault_tokens.c.connection_id == connection_id)
            ).mappings().all()
        by_kind = {r["kind"]: r for r in rows}
        if ACCESS not in by_kind and REFRESH not in by_kind:
            return None
        values: dict[str, str | None] = {}
        for kind in KINDS:
            r = by_kind.get(kind)
            values[kind] = (
                None if r is None else self._open(connection_id, kind, r["key_id"], r["nonce"], r["ciphertext"])
            )
        access = by_kind.get(ACCESS)
        return TokenSet(
            access_token=values[ACCESS] or "",
            refresh_token=values[REFRESH],
            expires_at=_utc(access["expires_at"]) if access is not None else None,
        )

    def delete(self, connection_id: str, *, bind: Bind = None) -> bool:
        with self._tx(bind) as conn:
            result = conn.execute(sa.delete(vault_tokens).where(vault_tokens.c.connection_id == connection_id))
        return bool(result.rowcount)

    def count_by_key(self, *, bind: Bind = None) -> dict[str, int]:
        """Rows per key id: tells when an old key may leave the ring."""
        with self._tx(bind) as conn:
            rows = conn.execute(
                sa.select(vault_tokens.c.key_id, sa.func.count()).group_by(vault_tokens.c.key_id)
            ).all()
        return {k: n for k, n in rows}

    def rotate(self, bind: Bind = None, *, batch_size: int = 100) -> int:
        """Re-seal every row not under the active key; returns how many were re-sealed.

        Each batch is committed on its own (an Engine: one short transaction per
        batch; a Session or Connection: `commit()` after each batch) so locks stay
        short and a crash loses at most one batch of work: those rows simply stay
        readable under the old key. The update is conditional on the old key id and
        nonce, so a concurrent `put` (already under the active key) is never
        overwritten with stale tokens.
        """
        done = 0
        while True:
            if bind is None or isinstance(bind, sa.Engine):
                with (bind or self.engine).begin() as conn:
                    n = self._rotate_batch(conn, batch_size)
            else:
                n = self._rotate_batch(bind, batch_size)
                bind.commit()
            if n is None:
                return done
            done += n

    def _rotate_batch(self, conn, batch_size: int) -> int | None:
        active = self.keyring.active_key_id
        rows = conn.execute(
            sa.select(vault_tokens)
            .where(vault_tokens.c.key_id != active)
            .order_by(vault_tokens.c.connection_id, vault_tokens.c.kind)
            .limit(batch_size)
        ).mappings().all()
        if not rows:
            return None
        now = datetime.now(timezone.utc)
        done = 0
        for r in rows:
            plain = self._open(r["connection_id"], r["kind"], r["key_id"], r["nonce"], r["ciphertext"])
            key_id, nonce, ct = self._seal(r["connection_id"], r["kind"], plain)
            result = conn.execute(
                sa.update(vault_tokens)
                .where(
                    vault_tokens.c.connection_id == r["connection_id"],
                    vault_tokens.c.kind == r["kind"],
                    vault_tokens.c.key_id == r["key_id"],
                    vault_tokens.c.nonce == r["nonce"],
                )
                .values(key_id=key_id, nonce=nonce, ciphertext=ct, updated_at=now)
            )
            done += result.rowcount
        return done


if __name__ == "__main__":  # `python -m store.vault` prints a fresh ring entry
    import sys

    key_id = sys.argv[1] if len(sys.argv) > 1 else "k" + secrets.token_hex(3)
    print(f"{key_id}:{generate_key()}")
