"""The token vault on SQLite and PostgreSQL: sealed at rest, bound to its row, rotatable."""

from __future__ import annotations

import base64
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from models.errors import ConnectorError
from store.vault import (
    KeyRing,
    TokenSet,
    TokenVault,
    VaultConfigError,
    VaultDecryptError,
    VaultKeyMissing,
    generate_key,
    vault_tokens,
)

ACCESS = "ya29.ACCESS-secret-5f1c0e7d9b"
REFRESH = "1//REFRESH-secret-a73b2c91ee"


def ring(*ids: str, keys: dict[str, str] | None = None) -> KeyRing:
    keys = keys if keys is not None else {}
    return KeyRing.parse(",".join(f"{i}:{keys.setdefault(i, generate_key())}" for i in ids))


@pytest.fixture
def engine(db_url):
    eng = sa.create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def keys():
    return {"k1": generate_key(), "k2": generate_key()}


@pytest.fixture
def vault(engine, keys):
    v = TokenVault(engine, ring("k1", keys=keys))
    v.create_table()
    return v


def raw_rows(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(vault_tokens)).mappings()]


def test_roundtrip(vault):
    exp = datetime(2031, 5, 4, 3, 2, 1, tzinfo=timezone.utc)
    vault.put("conn-1", ACCESS, REFRESH, exp)
    got = vault.get("conn-1")
    assert got == TokenSet(ACCESS, REFRESH, exp)
    assert got.expires_at.tzinfo is not None
    assert vault.get("conn-unknown") is None

    # A refresh answer without a new refresh token keeps the stored one.
    vault.put("conn-1", "ya29.NEWER", None, exp + timedelta(hours=1))
    got = vault.get("conn-1")
    assert (got.access_token, got.refresh_token) == ("ya29.NEWER", REFRESH)
    assert got.expires_at == exp + timedelta(hours=1)

    # A rotated refresh token replaces the old one.
    vault.put("conn-1", "ya29.NEWEST", "1//ROTATED", None)
    assert vault.get("conn-1").refresh_token == "1//ROTATED"

    assert vault.delete("conn-1") is True
    assert vault.get("conn-1") is None
    assert vault.delete("conn-1") is False


def test_same_plaintext_never_gives_same_ciphertext(vault, engine):
    vault.put("a", ACCESS, ACCESS, None)
    rows = raw_rows(engine)
    assert len({bytes(r["nonce"]) for r in rows}) == 2
    assert len({bytes(r["ciphertext"]) for r in rows}) == 2


def test_no_plaintext_in_database(vault, engine, db_url, caplog):
    caplog.set_level(logging.DEBUG)
    for i in range(5):
        vault.put(f"conn-{i}", f"{ACCESS}-{i}", f"{REFRESH}-{i}", datetime.now(timezone.utc))
    needles = [ACCESS.encode(), REFRESH.encode(), b"secret-5f1c0e7d9b", b"secret-a73b2c91ee"]
    needles += [base64.b64encode(n) for n in needles[:2]]

    # Every column of every row, rendered every way the driver hands it back.
    rows = raw_rows(engine)
    assert len(rows) == 10
    for row in rows:
        for value in row.values():
            blob = bytes(value) if isinstance(value, (bytes, memoryview)) else str(value).encode()
            for n in needles:
                assert n not in blob

    if db_url.startswith("sqlite"):
        engine.dispose()  # flush and close the file
        data = Path(db_url.removeprefix("sqlite:///")).read_bytes()
        assert b"vault_tokens" in data  # we are scanning the right file
        for n in needles:
            assert n not in data
    # And nothing leaked into logs or reprs.
    assert "secret" not in caplog.text
    assert "secret" not in repr(vault.get("conn-1")) and "secret" not in str(vault.get("conn-1"))


def test_tampered_ciphertext_fails_clearly(vault, engine):
    vault.put("conn-1", ACCESS, REFRESH, None)
    with engine.begin() as conn:
        ct = conn.execute(
            sa.select(vault_tokens.c.ciphertext).where(vault_tokens.c.kind == "access")
        ).scalar_one()
        flipped = bytearray(ct)
        flipped[3] ^= 0x01
        conn.execute(sa.update(vault_tokens).where(vault_tokens.c.kind == "access").values(ciphertext=bytes(flipped)))
    with pytest.raises(VaultDecryptError) as err:
        vault.get("conn-1")
    assert isinstance(err.value, ConnectorError) and err.value.retryable is False
    assert "conn-1" in str(err.value) and "failed authentication" in str(err.value)
    assert "secret" not in str(err.value)


def test_swapped_rows_fail(vault, engine):
    """A ciphertext moved to another connection, or to the other kind, does not open."""
    vault.put("victim", ACCESS, REFRESH, None)
    vault.put("attacker", "ya29.attacker", "1//attacker", None)
    cols = ("key_id", "nonce", "ciphertext")
    with engine.begin() as conn:
        victim = conn.execute(
            sa.select(*[vault_tokens.c[c] for c in cols]).where(
                vault_tokens.c.connection_id == "victim", vault_tokens.c.kind == "refresh"
            )
        ).one()
        conn.execute(
            sa.update(vault_tokens)
            .where(vault_tokens.c.connection_id == "attacker", vault_tokens.c.kind == "refresh")
            .values(dict(zip(cols, victim)))
        )
    with pytest.raises(VaultDecryptError):
        vault.get("attacker")

    # Same connection, refresh ciphertext copied into the access slot.
    vault.put("other", ACCESS, REFRESH, None)
    with engine.begin() as conn:
        ref = conn.execute(
            sa.select(*[vault_tokens.c[c] for c in cols]).where(
                vault_tokens.c.connection_id == "other", vault_tokens.c.kind == "refresh"
            )
        ).one()
        conn.execute(
            sa.update(vault_tokens)
            .where(vault_tokens.c.connection_id == "other", vault_tokens.c.kind == "access")
            .values(dict(zip(cols, ref)))
        )
    with pytest.raises(VaultDecryptError):
        vault.get("other")
    assert vault.get("victim").refresh_token == REFRESH  # the original is untouched


def test_rotation(engine, keys):
    old = TokenVault(engine, ring("k1", keys=keys))
    old.create_table()
    for i in range(7):
        old.put(f"c{i}", f"access-{i}", f"refresh-{i}", None)
    assert old.count_by_key() == {"k1": 14}

    # Deploy the new ring: k2 active, k1 still readable. Nothing re-sealed yet.
    new = TokenVault(engine, ring("k2", "k1", keys=keys))
    assert new.get("c3").refresh_token == "refresh-3"
    new.put("c0", "access-0b", None, None)  # writes go under k2 right away
    assert new.count_by_key() == {"k1": 13, "k2": 1}
    assert old.get("c5").access_token == "access-5"  # old workers still read during rollout

    n = new.rotate(batch_size=3)
    assert n == 13
    assert new.count_by_key() == {"k2": 14}
    assert new.rotate() == 0
    for i in range(7):
        got = new.get(f"c{i}")
        assert got.refresh_token == f"refresh-{i}"
        assert got.access_token == ("access-0b" if i == 0 else f"access-{i}")

    # k1 can now leave the ring.
    only_new = TokenVault(engine, ring("k2", keys=keys))
    assert only_new.get("c6").access_token == "access-6"
    # A worker still on the old ring cannot read what was re-sealed, and says why.
    with pytest.raises(VaultKeyMissing, match="'k2'"):
        old.get("c6")


def test_rotation_through_a_session(engine, keys):
    from sqlalchemy.orm import Session

    TokenVault(engine, ring("k1", keys=keys)).create_table()
    old = TokenVault(engine, ring("k1", keys=keys))
    for i in range(5):
        old.put(f"s{i}", f"a{i}", f"r{i}", None)
    new = TokenVault(engine, ring("k2", "k1", keys=keys))
    with Session(engine) as session:
        assert new.rotate(session, batch_size=2) == 10
    assert new.count_by_key() == {"k2": 10}
    assert new.get("s4").refresh_token == "r4"


def test_missing_key_id_is_a_clear_error(engine, keys):
    v1 = TokenVault(engine, ring("k1", keys=keys))
    v1.create_table()
    v1.put("c", ACCESS, REFRESH, None)
    v2 = TokenVault(engine, ring("k2", keys=keys))
    with pytest.raises(VaultKeyMissing) as err:
        v2.get("c")
    assert "'k1'" in str(err.value) and "not in the key ring" in str(err.value)
    with pytest.raises(VaultKeyMissing):
        v2.rotate()


def test_wrong_key_material_under_same_id(engine):
    v1 = TokenVault(engine, ring("k1"))
    v1.create_table()
    v1.put("c", ACCESS, REFRESH, None)
    with pytest.raises(VaultDecryptError):
        TokenVault(engine, ring("k1")).get("c")  # same id, different bytes


def test_joins_caller_transaction(vault, engine):
    with engine.connect() as conn:
        trans = conn.begin()
        vault.put("tx", ACCESS, REFRESH, None, bind=conn)
        assert vault.get("tx", bind=conn).access_token == ACCESS
        trans.rollback()
    assert vault.get("tx") is None


# ---------------------------------------------------------------- key ring (no DB)


def test_keyring_from_env_and_file(monkeypatch, tmp_path):
    a, b = generate_key(), generate_key()
    assert len(base64.b64decode(a)) == 32 and a != b
    monkeypatch.setenv("CONCORD_VAULT_KEYS", f"k2:{a}, k1:{b}")
    kr = KeyRing.from_env()
    assert kr.active_key_id == "k2" and kr.key_ids == ["k2", "k1"]
    assert a not in repr(kr)

    f = tmp_path / "keys"
    f.write_text(f"# rotated 2024-06\nk3:{a}\nk2:{b}\n")
    assert KeyRing.from_file(f).key_ids == ["k3", "k2"]

    monkeypatch.delenv("CONCORD_VAULT_KEYS")
    with pytest.raises(VaultConfigError, match="CONCORD_VAULT_KEYS is not set"):
        KeyRing.from_env()
    for bad, msg in [
        ("k1:" + base64.b64encode(b"short").decode(), "32 bytes"),
        ("k1:not base64!!", "not valid base64"),
        (f"k1:{a},k1:{b}", "twice"),
        (a, "id:base64key"),
        (f"bad id:{a}", "invalid vault key id"),
    ]:
        with pytest.raises(VaultConfigError, match=msg):
            KeyRing.parse(bad)


def test_tokenset_repr_hides_tokens():
    ts = TokenSet(ACCESS, REFRESH, None, ("a",))
    for text in (repr(ts), str(ts), f"{ts}", repr([ts])):
        assert "secret" not in text and "<hidden>" in text
