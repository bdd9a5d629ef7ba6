"""What Concord knows of each outbox item it sends (see the table's comment in store/schema.py)."""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models.send import OutgoingMessage
from store.repo import _insert
from store.schema import outbox_sends

FINAL = ("sent", "failed")
#: states in which an item waits for its mailbox to send it
WAITING = ("queued", "scheduled", "held")


def note_items(s: Session, org_id: str, items: Sequence[OutgoingMessage]) -> list[str]:
    """Record outbox items as the platform reports them; the ids whose state changed here.

    The platform decides what is queued, scheduled or cancelled; Concord decides sending,
    sent and failed once it has started. An item already sent or failed here stays so.
    """
    now = time.time()
    changed: list[str] = []
    existing = {r.item_id: r for r in s.execute(sa.select(outbox_sends).where(
        outbox_sends.c.org_id == org_id, outbox_sends.c.item_id.in_([i.id for i in items])))} if items else {}
    for item in items:
        row = existing.get(item.id)
        record = item.record
        if row is None:
            if item.state in FINAL or item.state == "sending":
                continue  # sent or ended elsewhere before Concord saw it: nothing to do
            s.execute(_insert(s, outbox_sends).values(
                org_id=org_id, item_id=item.id, connection_id=None, user_id=item.user_id, message_id=item.message_id,
                state="scheduled" if item.state == "scheduled" else "queued", attempts=0, send_at=item.send_at,
                record_type=record.object_type if record else None, record_id=record.object_id if record else None,
                queued_at=now, updated_at=now,
            ).on_conflict_do_nothing(index_elements=[outbox_sends.c.org_id, outbox_sends.c.item_id]))
            changed.append(item.id)
        elif row.state not in FINAL and row.state != "sending":
            if item.state == "failed":  # cancelled on the platform before it went out
                state, reason = "failed", item.reason or "cancelled"
            elif item.state in ("queued", "scheduled"):
                state, reason = ("scheduled" if item.state == "scheduled" else row.state
                                 if row.state == "held" else "queued"), row.reason
            else:
                continue
            if state != row.state or item.send_at != row.send_at:
                s.execute(sa.update(outbox_sends).where(outbox_sends.c.org_id == org_id,
                                                        outbox_sends.c.item_id == item.id)
                          .values(state=state, reason=reason, send_at=item.send_at, updated_at=now))
                changed.append(item.id)
    return changed


def waiting_for(s: Session, org_id: str, user_id: str, now: float, limit: int = 200) -> list:
    """Items this user's mailbox should send now (scheduled ones once due), oldest first."""
    due = sa.or_(outbox_sends.c.state.in_(("queued", "held")),
                 sa.and_(outbox_sends.c.state == "scheduled", outbox_sends.c.send_at <= now),
                 # an attempt that ended without a word (a lost worker): the next attempt
                 # waits its lease out, then looks in Sent first
                 outbox_sends.c.state == "sending")
    return list(s.execute(sa.select(outbox_sends).where(
        outbox_sends.c.org_id == org_id, outbox_sends.c.user_id == user_id, due)
        .order_by(outbox_sends.c.queued_at).limit(limit)))


def users_waiting(s: Session, org_id: str, item_ids: Iterable[str]) -> set[str]:
    ids = list(item_ids)
    if not ids:
        return set()
    return set(s.execute(sa.select(outbox_sends.c.user_id).where(
        outbox_sends.c.org_id == org_id, outbox_sends.c.item_id.in_(ids),
        outbox_sends.c.state.in_(WAITING))).scalars())


def lease_left(s: Session, org_id: str, item_id: str) -> float:
    """Seconds until another attempt's lease on this item runs out (0: none)."""
    until = s.execute(sa.select(outbox_sends.c.lease_until).where(
        outbox_sends.c.org_id == org_id, outbox_sends.c.item_id == item_id)).scalar()
    return max(0.0, (until or 0.0) - time.time())


def get(s: Session, org_id: str, item_id: str):
    return s.execute(sa.select(outbox_sends).where(outbox_sends.c.org_id == org_id,
                                                   outbox_sends.c.item_id == item_id)).first()


def choose_message_id(s: Session, org_id: str, item_id: str, message_id: str) -> str:
    """Store `message_id` unless one is stored already; the stored one either way."""
    s.execute(sa.update(outbox_sends).where(outbox_sends.c.org_id == org_id, outbox_sends.c.item_id == item_id,
                                            outbox_sends.c.message_id.is_(None))
              .values(message_id=message_id, updated_at=time.time()))
    return s.execute(sa.select(outbox_sends.c.message_id).where(
        outbox_sends.c.org_id == org_id, outbox_sends.c.item_id == item_id)).scalar_one()


def begin_attempt(s: Session, org_id: str, item_id: str, connection_id: str, lease_s: float) -> int | None:
    """Take the lease for one attempt; the number of attempts made before it, or None when
    another attempt holds an unexpired lease (it may be sending right now)."""
    now = time.time()
    res = s.execute(sa.update(outbox_sends).where(
        outbox_sends.c.org_id == org_id, outbox_sends.c.item_id == item_id,
        outbox_sends.c.state.notin_(FINAL),
        sa.or_(outbox_sends.c.lease_until.is_(None), outbox_sends.c.lease_until < now))
        .values(attempts=outbox_sends.c.attempts + 1, lease_until=now + lease_s, state="sending",
                connection_id=connection_id, updated_at=now)
        .returning(outbox_sends.c.attempts))
    row = res.first()
    return None if row is None else int(row[0]) - 1


def finish(s: Session, org_id: str, item_id: str, state: str, *, reason: str | None = None,
           provider_message_id: str | None = None, provider_thread_id: str | None = None) -> None:
    now = time.time()
    values = {"state": state, "reason": reason, "lease_until": None, "updated_at": now}
    if state == "sent":
        values.update(provider_message_id=provider_message_id, provider_thread_id=provider_thread_id, sent_at=now)
    s.execute(sa.update(outbox_sends).where(outbox_sends.c.org_id == org_id, outbox_sends.c.item_id == item_id,
                                            outbox_sends.c.state.notin_(FINAL)).values(**values))


def hold(s: Session, org_id: str, item_ids: Sequence[str], reason: str) -> None:
    if item_ids:
        s.execute(sa.update(outbox_sends).where(outbox_sends.c.org_id == org_id,
                                                outbox_sends.c.item_id.in_(list(item_ids)),
                                                outbox_sends.c.state.in_(WAITING))
                  .values(state="held", reason=reason, updated_at=time.time()))


def by_message_ids(s: Session, org_id: str, message_ids: Iterable[str]) -> dict[str, object]:
    ids = list(set(message_ids))
    if not ids:
        return {}
    rows = s.execute(sa.select(outbox_sends).where(outbox_sends.c.org_id == org_id,
                                                   outbox_sends.c.message_id.in_(ids)))
    return {r.message_id: r for r in rows}


def counts(s: Session, org_id: str, user_id: str | None = None) -> dict[str, int]:
    q = sa.select(outbox_sends.c.state, sa.func.count()).where(outbox_sends.c.org_id == org_id)
    if user_id is not None:
        q = q.where(outbox_sends.c.user_id == user_id)
    return {st: int(n) for st, n in s.execute(q.group_by(outbox_sends.c.state))}
