"""Queries the sync cycle needs beyond plain CRUD: which items are busy, item
outcomes addressed by (side, external id), and reviews answered by a person."""

from __future__ import annotations

import time
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models.workflow import allowed_answers
from store.repo import _trim, resolve_review
from store.schema import actions, items, link_keys, links, reviews


def linked_mailbox_ids(s: Session, connection_id: str, *, kind: str = "contacts") -> list[str]:
    return list(s.execute(sa.select(links.c.mailbox_id)
                          .where(links.c.connection_id == connection_id, links.c.kind == kind)).scalars())


def external_ids_in_batch(s: Session, connection_id: str, side: str, batch_id: str,
                          *, kind: str = "contacts") -> set[str]:
    return set(s.execute(
        sa.select(items.c.external_id)
        .where(items.c.connection_id == connection_id, items.c.kind == kind, items.c.side == side,
               items.c.batch_id == batch_id)
    ).scalars())


def items_with_unfinished_actions(s: Session, connection_id: str, statuses: Iterable[str],
                                  *, kind: str = "contacts") -> set[tuple[str, str]]:
    """Items an earlier cycle's actions still hold; they are not planned again until done.

    That includes the records those actions already created on the other side: until
    the action finishes and links them, such a record looks like a new one, and
    planning it would create its twin (an action is resumed, never re-planned).
    """
    out: set[tuple[str, str]] = set()
    for m, p, result in s.execute(
        sa.select(actions.c.item_mailbox_id, actions.c.item_platform_id, actions.c.result)
        .where(actions.c.connection_id == connection_id, actions.c.kind == kind,
               actions.c.status.in_(list(statuses)))
    ):
        if m:
            out.add(("mailbox", m))
        if p:
            out.add(("platform", p))
        for side in ("mailbox", "platform"):
            made = (result or {}).get(side) or {}
            if made.get("id"):
                out.add((side, made["id"]))
    return out


def set_item_outcome_by_key(s: Session, connection_id: str, side: str, external_id: str, status: str, *,
                            rule: str | None = None, error_code: str | None = None,
                            error_message: str | None = None, review_id: int | None = None,
                            kind: str = "contacts") -> bool:
    res = s.execute(
        sa.update(items)
        .where(items.c.connection_id == connection_id, items.c.kind == kind, items.c.side == side,
               items.c.external_id == external_id)
        .values(status=status, rule=rule, error_code=error_code, error_message=_trim(error_message),
                review_id=review_id, updated_at=time.time())
    )
    return res.rowcount == 1


def active_reviews(s: Session, connection_id: str, *, kind: str = "contacts") -> list:
    """Open reviews and answered ones whose answer the planner has not applied yet."""
    return list(s.execute(
        sa.select(reviews)
        .where(reviews.c.connection_id == connection_id, reviews.c.item_kind == kind,
               reviews.c.status.in_(("open", "resolved")))
        .order_by(reviews.c.id)
    ))


def update_review(s: Session, review_id: int, *, fields: list[str], detail: dict) -> None:
    """The planner asks the review's question again: an answer it could not apply (its
    candidate was linked meanwhile, the merged values left a field open) reopens it,
    so it waits for a person instead of standing answered and unapplied."""
    s.execute(sa.update(reviews).where(reviews.c.id == review_id)
              .values(fields=list(fields), detail=detail, status="open", resolution=None, resolved_at=None))


def store_merged_fields(s: Session, review_id: int, fields: dict[str, str]) -> None:
    """Keep a person's merged values beside the review, before the signal names it."""
    row = s.execute(sa.select(reviews.c.detail).where(reviews.c.id == review_id)).first()
    if row is None:
        raise KeyError(review_id)
    detail = dict(row.detail or {})
    detail["merged_fields"] = {str(k): str(v) for k, v in fields.items()}
    s.execute(sa.update(reviews).where(reviews.c.id == review_id).values(detail=detail))


def answer_problem(s: Session, connection_id: str, review_id: int, choice: str) -> str | None:
    """Why this answer cannot be taken, as a short code; None when it can."""
    row = s.execute(sa.select(reviews.c.connection_id, reviews.c.kind, reviews.c.status, reviews.c.detail)
                    .where(reviews.c.id == review_id)).first()
    if row is None:
        return "unknown_review"
    if row.connection_id != connection_id:
        return "other_connection"
    if row.status != "open":
        return "not_open"
    if choice not in allowed_answers(row.kind, (row.detail or {}).get("rule")):
        return "choice_does_not_fit"
    return None


def resolve_review_and_reopen(s: Session, connection_id: str, review_id: int, choice: str) -> bool:
    """Record the answer and put the review's items back to pending for the next plan.

    An answer the store refuses (see `answer_problem`) changes nothing and returns False.
    """
    if answer_problem(s, connection_id, review_id, choice) is not None:
        return False
    row = s.execute(sa.select(reviews).where(reviews.c.id == review_id)).first()
    resolution: dict = {"choice": choice}
    if choice == "merged":
        resolution["fields"] = (row.detail or {}).get("merged_fields", {})
    if not resolve_review(s, review_id, resolution):
        return False
    for side, ext in (("mailbox", row.mailbox_id), ("platform", row.platform_id)):
        if ext:
            s.execute(
                sa.update(items)
                .where(items.c.connection_id == connection_id, items.c.kind == row.item_kind, items.c.side == side,
                       items.c.external_id == ext)
                .values(status="pending", updated_at=time.time())
            )
    return True


def set_item_outcomes_by_key(s: Session, connection_id: str, outcomes: Iterable[dict],
                             *, kind: str = "contacts") -> None:
    """Bulk `set_item_outcome_by_key`: one executemany for a whole chunk of items.

    Each dict: side, external_id, status, and optionally rule, error_code, error_message, review_id.
    """
    now = time.time()
    rows = [{"b_cid": connection_id, "b_kind": kind, "b_side": o["side"], "b_ext": o["external_id"], "b_status": o["status"],
             "b_rule": o.get("rule"), "b_code": o.get("error_code"), "b_msg": _trim(o.get("error_message")),
             "b_review": o.get("review_id"), "b_now": now} for o in outcomes]
    if not rows:
        return
    stmt = (
        sa.update(items)
        .where(items.c.connection_id == sa.bindparam("b_cid"), items.c.kind == sa.bindparam("b_kind"),
               items.c.side == sa.bindparam("b_side"), items.c.external_id == sa.bindparam("b_ext"))
        .values(status=sa.bindparam("b_status"), rule=sa.bindparam("b_rule"), error_code=sa.bindparam("b_code"),
                error_message=sa.bindparam("b_msg"), review_id=sa.bindparam("b_review"),
                updated_at=sa.bindparam("b_now"))
    )
    s.connection().execute(stmt, rows)


_ACTION_BULK_FIELDS = ("status", "result", "error_code", "error_message", "decision")


def update_actions(s: Session, updates: Iterable[dict]) -> None:
    """Bulk action moves: dicts with `id` and any of status/result/error_code/error_message/decision.

    Updates that set the same fields share one executemany.
    """
    groups: dict[tuple[str, ...], list[dict]] = {}
    now = time.time()
    for u in updates:
        fields = tuple(sorted(k for k in u if k != "id"))
        unknown = set(fields) - set(_ACTION_BULK_FIELDS)
        if unknown:
            raise ValueError(f"unknown action fields: {sorted(unknown)}")
        row = {"b_id": u["id"], "b_now": now}
        for k in fields:
            row[f"b_{k}"] = _trim(u[k]) if k == "error_message" else u[k]
        groups.setdefault(fields, []).append(row)
    for fields, rows in groups.items():
        stmt = (sa.update(actions).where(actions.c.id == sa.bindparam("b_id"))
                .values(**{k: sa.bindparam(f"b_{k}") for k in fields}, updated_at=sa.bindparam("b_now")))
        s.connection().execute(stmt, rows)


def delete_links(s: Session, link_ids: Iterable[int]) -> int:
    ids = list(link_ids)
    if not ids:
        return 0
    # Keys explicitly as well as ON DELETE CASCADE (a SQLite connection may lack foreign_keys=ON).
    s.execute(sa.delete(link_keys).where(link_keys.c.link_id.in_(ids)))
    return s.execute(sa.delete(links).where(links.c.id.in_(ids))).rowcount


def get_links(s: Session, link_ids: Iterable[int]) -> dict[int, object]:
    ids = sorted({int(i) for i in link_ids if i is not None})
    if not ids:
        return {}
    return {int(r.id): r for r in s.execute(sa.select(links).where(links.c.id.in_(ids)))}


def forget_records(s: Session, connection_id: str, side: str, external_ids: Iterable[str], *,
                   kind: str = "contacts") -> None:
    """Keep only the ids of these staged items, none of their content (an erased person)."""
    ids = list(external_ids)
    for i in range(0, len(ids), 500):
        for ext in ids[i:i + 500]:
            s.execute(sa.update(items).where(items.c.connection_id == connection_id, items.c.kind == kind,
                                             items.c.side == side, items.c.external_id == ext)
                      .values(record={"side": side, "external_id": ext}, updated_at=time.time()))
