"""Calendar claims: the same meeting on several connected calendars becomes one platform
record.

Before a mailbox's event is created on the platform, its (UID, RECURRENCE-ID) is claimed
for the organisation by inserting a row under a primary key. Two workers racing insert
at once; the database keeps exactly one row, and both read the same holder back. The
holder creates the record and records its platform id here; the others do not create,
they wait for that id and link their copy to it (activities/calendar.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from store.repo import _insert
from store.schema import calendar_claims


@dataclass(frozen=True)
class MeetingClaim:
    uid: str
    recurrence_id: str
    connection_id: str
    claim_key: str
    platform_id: str | None


def _row(r) -> MeetingClaim:
    return MeetingClaim(r.uid, r.recurrence_id, r.connection_id, r.claim_key, r.platform_id)


def claim(s: Session, org_id: str, uid: str, recurrence_id: str, *, connection_id: str,
          claim_key: str) -> MeetingClaim:
    """Claim a meeting for the write `claim_key`, or learn who holds it.

    Commit right after: a claim decides a race only once others can see it.
    """
    s.execute(_insert(s, calendar_claims).values(
        org_id=org_id, uid=uid, recurrence_id=recurrence_id, connection_id=connection_id,
        claim_key=claim_key, platform_id=None, claimed_at=time.time(),
    ).on_conflict_do_nothing(index_elements=[calendar_claims.c.org_id, calendar_claims.c.uid,
                                             calendar_claims.c.recurrence_id]))
    row = s.execute(sa.select(calendar_claims).where(
        calendar_claims.c.org_id == org_id, calendar_claims.c.uid == uid,
        calendar_claims.c.recurrence_id == recurrence_id)).first()
    assert row is not None  # inserted, or held by another
    return _row(row)


def set_platform_id(s: Session, org_id: str, uid: str, recurrence_id: str, platform_id: str) -> None:
    s.execute(sa.update(calendar_claims).where(
        calendar_claims.c.org_id == org_id, calendar_claims.c.uid == uid,
        calendar_claims.c.recurrence_id == recurrence_id).values(platform_id=platform_id))


def release(s: Session, org_id: str, uid: str, recurrence_id: str, claim_key: str) -> None:
    """Give a claim up (its create was refused for good), so another copy may create it."""
    s.execute(sa.delete(calendar_claims).where(
        calendar_claims.c.org_id == org_id, calendar_claims.c.uid == uid,
        calendar_claims.c.recurrence_id == recurrence_id, calendar_claims.c.claim_key == claim_key,
        calendar_claims.c.platform_id.is_(None)))


def forget_platform_ids(s: Session, org_id: str, platform_ids: Iterable[str]) -> None:
    """The platform records are gone: their meetings may be created again."""
    ids = sorted(set(platform_ids))
    for i in range(0, len(ids), 500):
        s.execute(sa.delete(calendar_claims).where(calendar_claims.c.org_id == org_id,
                                                   calendar_claims.c.platform_id.in_(ids[i:i + 500])))


def claims_for(s: Session, org_id: str, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], MeetingClaim]:
    wanted = set(keys)
    out: dict[tuple[str, str], MeetingClaim] = {}
    uids = sorted({u for u, _ in wanted})
    for i in range(0, len(uids), 500):
        rows = s.execute(sa.select(calendar_claims).where(calendar_claims.c.org_id == org_id,
                                                          calendar_claims.c.uid.in_(uids[i:i + 500])))
        for r in rows:
            if (r.uid, r.recurrence_id) in wanted:
                out[(r.uid, r.recurrence_id)] = _row(r)
    return out


def count(s: Session, org_id: str) -> int:
    return int(s.execute(sa.select(sa.func.count()).select_from(calendar_claims)
                         .where(calendar_claims.c.org_id == org_id)).scalar_one())
