"""The mail kind's claims and sightings (see the tables' comment in store/schema.py).

`claim` is the whole of "a thread once per organisation": an INSERT that does nothing
on conflict, then a read of who holds the row. Two mailboxes racing on one message
both insert; exactly one row exists afterwards, and both read the same holder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from store.repo import _insert
from store.schema import mail_claims, mail_sightings


@dataclass(frozen=True)
class Claim:
    message_key: str
    thread_key: str
    weak_thread: bool
    claimed_by: str
    activity_id: str | None
    visibility: str | None
    status: str

    def held_by(self, connection_id: str) -> bool:
        return self.claimed_by == connection_id


def _claim(row) -> Claim:
    return Claim(row.message_key, row.thread_key, bool(row.weak_thread), row.claimed_by, row.activity_id,
                 row.visibility, row.status)


def claim(s: Session, org_id: str, message_key: str, *, thread_key: str, weak_thread: bool,
          connection_id: str, visibility: str, weak_key: str | None = None) -> Claim:
    """Claim a message for this mailbox, or learn who already holds it.

    Commit right after: the claim only decides a race once it is visible to others.
    """
    now = time.time()
    stmt = _insert(s, mail_claims).values(
        org_id=org_id, message_key=message_key, thread_key=thread_key, weak_thread=weak_thread,
        weak_key=weak_key, claimed_by=connection_id, activity_id=None, visibility=visibility, status="claimed",
        created_at=now, updated_at=now,
    ).on_conflict_do_nothing(index_elements=[mail_claims.c.org_id, mail_claims.c.message_key])
    s.execute(stmt)
    got = get_claim(s, org_id, message_key)
    assert got is not None  # inserted, or held by another
    return got


def get_claim(s: Session, org_id: str, message_key: str) -> Claim | None:
    row = s.execute(sa.select(mail_claims).where(mail_claims.c.org_id == org_id,
                                                 mail_claims.c.message_key == message_key)).first()
    return _claim(row) if row is not None else None


def claims(s: Session, org_id: str, message_keys: Iterable[str]) -> dict[str, Claim]:
    keys = sorted(set(message_keys))
    out: dict[str, Claim] = {}
    for i in range(0, len(keys), 500):
        rows = s.execute(sa.select(mail_claims).where(mail_claims.c.org_id == org_id,
                                                      mail_claims.c.message_key.in_(keys[i:i + 500])))
        out.update({r.message_key: _claim(r) for r in rows})
    return out


def set_logged(s: Session, org_id: str, message_key: str, *, activity_id: str, visibility: str) -> None:
    s.execute(sa.update(mail_claims).where(mail_claims.c.org_id == org_id, mail_claims.c.message_key == message_key)
              .values(activity_id=activity_id, visibility=visibility, status="logged", updated_at=time.time()))


def set_removed(s: Session, org_id: str, message_key: str) -> None:
    s.execute(sa.update(mail_claims).where(mail_claims.c.org_id == org_id, mail_claims.c.message_key == message_key)
              .values(status="removed", updated_at=time.time()))


def release(s: Session, org_id: str, message_key: str, connection_id: str) -> bool:
    """Give up a claim whose first write failed for good, so another mailbox's copy can
    log the message instead of waiting on it forever."""
    res = s.execute(sa.delete(mail_claims).where(
        mail_claims.c.org_id == org_id, mail_claims.c.message_key == message_key,
        mail_claims.c.claimed_by == connection_id, mail_claims.c.activity_id.is_(None)))
    return bool(res.rowcount)


def existing_thread(s: Session, org_id: str, weak_keys: Sequence[str]) -> str | None:
    """The thread a reply without references belongs to: one logged under the same
    subject and participants in its time bucket (or the neighbouring one), tried in
    order; the oldest such message's thread when several are."""
    for key in weak_keys:
        row = s.execute(sa.select(mail_claims.c.thread_key).where(
            mail_claims.c.org_id == org_id, mail_claims.c.weak_key == key).order_by(mail_claims.c.created_at)
            .limit(1)).first()
        if row is not None:
            return row.thread_key
    return None


def record_sightings(s: Session, org_id: str, connection_id: str, rows: Iterable[dict]) -> None:
    """Upsert what became of each mailbox copy: dicts with mailbox_id, message_key, state, rule."""
    now = time.time()
    values = [{"connection_id": connection_id, "org_id": org_id, "updated_at": now, **r} for r in rows]
    if not values:
        return
    stmt = _insert(s, mail_sightings)
    stmt = stmt.on_conflict_do_update(
        index_elements=[mail_sightings.c.connection_id, mail_sightings.c.mailbox_id],
        set_={"message_key": stmt.excluded.message_key, "state": stmt.excluded.state, "rule": stmt.excluded.rule,
              "updated_at": stmt.excluded.updated_at},
    )
    s.execute(stmt, values)


def sightings(s: Session, connection_id: str, mailbox_ids: Iterable[str]) -> dict[str, tuple[str, str, str | None]]:
    """mailbox id -> (message_key, state, rule)."""
    ids = sorted(set(mailbox_ids))
    out: dict[str, tuple[str, str, str | None]] = {}
    for i in range(0, len(ids), 500):
        rows = s.execute(sa.select(mail_sightings).where(mail_sightings.c.connection_id == connection_id,
                                                         mail_sightings.c.mailbox_id.in_(ids[i:i + 500])))
        out.update({r.mailbox_id: (r.message_key, r.state, r.rule) for r in rows})
    return out


def logged_elsewhere(s: Session, org_id: str, message_key: str, connection_id: str) -> int:
    """Other mailboxes whose copy of the message is logged (a removal leaves theirs be)."""
    return int(s.execute(sa.select(sa.func.count()).select_from(mail_sightings).where(
        mail_sightings.c.org_id == org_id, mail_sightings.c.message_key == message_key,
        mail_sightings.c.connection_id != connection_id, mail_sightings.c.state == "logged")).scalar_one())


def counts(s: Session, org_id: str) -> dict[str, int]:
    rows = s.execute(sa.select(mail_claims.c.status, sa.func.count()).where(mail_claims.c.org_id == org_id)
                     .group_by(mail_claims.c.status)).all()
    return {status: int(n) for status, n in rows}
