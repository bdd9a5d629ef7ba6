"""Repository functions over Concord's store, used by the Temporal activities.

Every function takes a `Session` and never commits: the caller owns the transaction,
which is what lets an activity stage a batch and advance its cursor atomically
(DESIGN principle 2). Rows come back as SQLAlchemy `Row`s (attribute access,
immutable); their JSON is read back into models by the kind that owns them.

Bulk paths (staging, links, outcomes, actions) are single executemany statements
per chunk, so a 10,000-contact first sync costs a handful of round trips, not 10,000.
Lists used in IN (...) are chunked to stay under SQLite's and PostgreSQL's
bound-parameter limits.

Misuse (an unknown status, a record for the wrong side) raises `Fatal`. A link that
would join a record already linked to another one raises `LinkConflict`, or, with
`save_links(..., skip_conflicts=True)`, is reported per spec so one bad link never
fails a batch. After a raise, the caller's transaction must be rolled back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from models.errors import Fatal, PreconditionFailed
from pydantic import BaseModel

from models.record import SIDES, SideRecord
from store.schema import (
    ACTION_STATUSES,
    AUDIT_OPS,
    CONNECTION_STATUSES,
    ITEM_STATUSES,
    PROVIDERS,
    REVIEW_KINDS,
    REVIEW_STATUSES,
    actions,
    audit_log,
    connections,
    cursors,
    items,
    link_keys,
    links,
    organisations,
    pending_oauth,
    reviews,
)

# Rows per executemany chunk / values per IN list; well under both backends' limits.
CHUNK = 1000
# Provider error texts can be long (HTML error pages); keep what a person needs.
MAX_ERROR_MESSAGE = 2000
RESOLUTION_CHOICES = ("mailbox", "platform", "merged", "link", "create", "ignore", "attach")


# --- helpers ----------------------------------------------------------------------


def _chunks(seq: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _check(value: str, allowed: Iterable[str], what: str) -> str:
    if value not in allowed:
        raise Fatal(f"unknown {what}: {value!r}")
    return value


def _insert(s: Session, table: sa.Table):
    """The dialect's INSERT, which knows ON CONFLICT on both SQLite and PostgreSQL."""
    name = s.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - only the two supported backends
        raise Fatal(f"unsupported database backend: {name}")
    return insert(table)


def insert_rows(s: Session, table: sa.Table, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    """Insert plain rows with the driver's own executemany.

    For the narrow, high-volume tables (blocking keys: about fifteen rows per
    contact) SQLAlchemy's executemany, which builds a parameter dict per row, cost
    more than the database's own work; these rows need none of what it adds (no
    defaults, no type processing, no RETURNING).
    """
    if not rows:
        return
    conn = s.connection()
    quote = conn.dialect.identifier_preparer.quote
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
           f"VALUES ({', '.join([mark] * len(columns))})")
    for chunk in _chunks(rows, 10 * CHUNK):
        conn.exec_driver_sql(sql, list(chunk))


def _is_unique_violation(exc: sa.exc.IntegrityError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == "23505":  # psycopg: unique_violation
        return True
    text = str(orig).lower()
    return "unique constraint" in text or "duplicate key" in text


def _trim(message: str | None) -> str | None:
    if message is None:
        return None
    return message if len(message) <= MAX_ERROR_MESSAGE else message[: MAX_ERROR_MESSAGE - 1] + "…"


def _json(content: BaseModel | dict) -> dict:
    """A record's content as stored: its JSON form (validated by its kind when read)."""
    return content.model_dump(mode="json") if isinstance(content, BaseModel) else dict(content)


class LinkConflict(Exception):
    """A link would join a mailbox or platform record already linked to another one on
    this connection. Not a stale etag: re-reading the provider will not fix it. Raised
    by the database's unique constraint only when a concurrent writer won a race, so
    a retry (which reads the winner first) settles it."""


# --- organisations and connections ------------------------------------------------


def create_org(s: Session, id: str, name: str, settings: dict | None = None) -> str:
    s.execute(sa.insert(organisations).values(id=id, name=name, settings=settings or {}))
    return id


def get_org(s: Session, org_id: str) -> Row | None:
    return s.execute(sa.select(organisations).where(organisations.c.id == org_id)).first()


def set_org_settings(s: Session, org_id: str, settings: dict) -> bool:
    res = s.execute(sa.update(organisations).where(organisations.c.id == org_id).values(settings=settings))
    return res.rowcount == 1


def create_connection(
    s: Session,
    *,
    id: str,
    org_id: str,
    user_id: str,
    provider: str,
    account_ref: str,
    status: str = "active",
    settings: dict | None = None,
) -> str:
    _check(provider, PROVIDERS, "provider")
    _check(status, CONNECTION_STATUSES, "connection status")
    now = time.time()
    s.execute(
        sa.insert(connections).values(
            id=id,
            org_id=org_id,
            user_id=user_id,
            provider=provider,
            account_ref=account_ref,
            status=status,
            settings=settings or {},
            created_at=now,
            updated_at=now,
        )
    )
    return id


def get_connection(s: Session, connection_id: str) -> Row | None:
    return s.execute(sa.select(connections).where(connections.c.id == connection_id)).first()


def find_connection(s: Session, org_id: str, provider: str, account_ref: str) -> Row | None:
    """The existing connection for this mailbox account, so a reconnect reuses it."""
    return s.execute(
        sa.select(connections)
        .where(
            connections.c.org_id == org_id,
            connections.c.provider == provider,
            connections.c.account_ref == account_ref,
        )
        .order_by(connections.c.created_at)
    ).first()


def set_connection_status(s: Session, connection_id: str, status: str) -> bool:
    _check(status, CONNECTION_STATUSES, "connection status")
    res = s.execute(
        sa.update(connections)
        .where(connections.c.id == connection_id)
        .values(status=status, updated_at=time.time())
    )
    return res.rowcount == 1


def set_connection_settings(s: Session, connection_id: str, settings: dict) -> bool:
    res = s.execute(
        sa.update(connections)
        .where(connections.c.id == connection_id)
        .values(settings=settings, updated_at=time.time())
    )
    return res.rowcount == 1


def list_connections(s: Session, org_id: str | None = None, status: str | None = None) -> list[Row]:
    q = sa.select(connections).order_by(connections.c.created_at, connections.c.id)
    if org_id is not None:
        q = q.where(connections.c.org_id == org_id)
    if status is not None:
        q = q.where(connections.c.status == status)
    return list(s.execute(q))


# --- cursors ----------------------------------------------------------------------


def get_cursor(s: Session, connection_id: str, stream: str) -> str | None:
    return s.execute(
        sa.select(cursors.c.value).where(cursors.c.connection_id == connection_id, cursors.c.stream == stream)
    ).scalar()


def set_cursor(s: Session, connection_id: str, stream: str, value: str | None, full_sync: bool = False) -> None:
    """Advance (or clear, with None) a delta cursor; `full_sync` counts resyncs for the state query."""
    now = time.time()
    stmt = _insert(s, cursors).values(
        connection_id=connection_id,
        stream=stream,
        value=value,
        updated_at=now,
        full_sync_count=1 if full_sync else 0,
    )
    bump = cursors.c.full_sync_count + (1 if full_sync else 0)
    stmt = stmt.on_conflict_do_update(
        index_elements=[cursors.c.connection_id, cursors.c.stream],
        set_={"value": value, "updated_at": now, "full_sync_count": bump},
    )
    s.execute(stmt)


def list_cursors(s: Session, connection_id: str) -> dict[str, Row]:
    rows = s.execute(sa.select(cursors).where(cursors.c.connection_id == connection_id))
    return {r.stream: r for r in rows}


# --- items ------------------------------------------------------------------------


def stage_records(
    s: Session, connection_id: str, side: str, records: Sequence[SideRecord], batch_id: str | None,
    *, kind: str = "contacts",
) -> int:
    """Stage inbound changes; the newest change for an item replaces any older one.

    Whatever state the item was in (applied, quarantined, in conflict), a new change
    re-opens it as pending with a fresh attempt count and a bumped `seq`, so an
    outcome computed for the older version can be refused (`expected_seq`).
    `review_id` is kept so the planner can supersede the review the old version
    opened. Duplicates within `records` collapse to the last one. Returns how many
    distinct items were staged.
    """
    _check(side, SIDES, "side")
    latest: dict[str, SideRecord] = {}
    for rec in records:
        if rec.side != side:
            raise Fatal(f"record for side {rec.side!r} staged as {side!r}")
        latest[rec.external_id] = rec
    if not latest:
        return 0
    now = time.time()
    rows = [
        {
            "connection_id": connection_id,
            "kind": kind,
            "side": side,
            "external_id": external_id,
            "record": rec.model_dump(mode="json"),
            "status": "pending",
            "attempts": 0,
            "batch_id": batch_id,
            "seq": 1,
            "received_at": now,
            "updated_at": now,
        }
        for external_id, rec in latest.items()
    ]
    stmt = _insert(s, items)
    stmt = stmt.on_conflict_do_update(
        index_elements=[items.c.connection_id, items.c.kind, items.c.side, items.c.external_id],
        set_={
            "record": stmt.excluded.record,
            "status": "pending",
            "rule": None,
            "error_code": None,
            "error_message": None,
            "attempts": 0,
            "batch_id": stmt.excluded.batch_id,
            "seq": items.c.seq + 1,
            "received_at": stmt.excluded.received_at,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    for chunk in _chunks(rows):
        s.execute(stmt, list(chunk))
    return len(rows)


def items_by_status(
    s: Session, connection_id: str, statuses: Iterable[str], limit: int | None = None, after_id: int | None = None,
    *, kind: str = "contacts",
) -> list[Row]:
    """Items in the given states, oldest first; `after_id` pages through a large backlog."""
    statuses = [_check(st, ITEM_STATUSES, "item status") for st in statuses]
    q = (
        sa.select(items)
        .where(items.c.connection_id == connection_id, items.c.kind == kind, items.c.status.in_(statuses))
        .order_by(items.c.id)
    )
    if after_id is not None:
        q = q.where(items.c.id > after_id)
    if limit is not None:
        q = q.limit(limit)
    return list(s.execute(q))


def items_by_batch(s: Session, connection_id: str, batch_id: str, statuses: Iterable[str] | None = None,
                   *, kind: str = "contacts") -> list[Row]:
    q = (
        sa.select(items)
        .where(items.c.connection_id == connection_id, items.c.kind == kind, items.c.batch_id == batch_id)
        .order_by(items.c.id)
    )
    if statuses is not None:
        q = q.where(items.c.status.in_([_check(st, ITEM_STATUSES, "item status") for st in statuses]))
    return list(s.execute(q))


def get_items(s: Session, connection_id: str, side: str, external_ids: Iterable[str],
              *, kind: str = "contacts") -> dict[str, Row]:
    ids = list(dict.fromkeys(external_ids))
    out: dict[str, Row] = {}
    for chunk in _chunks(ids):
        q = sa.select(items).where(
            items.c.connection_id == connection_id, items.c.kind == kind, items.c.side == side,
            items.c.external_id.in_(chunk)
        )
        out.update((r.external_id, r) for r in s.execute(q))
    return out


def get_item(s: Session, item_id: int) -> Row | None:
    return s.execute(sa.select(items).where(items.c.id == item_id)).first()


def set_item_outcome(
    s: Session,
    item_id: int,
    status: str,
    rule: str | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
    review_id: int | None = None,
    expected_seq: int | None = None,
) -> bool:
    """Record where an item ended up. With `expected_seq`, refuse if a newer change arrived."""
    _check(status, ITEM_STATUSES, "item status")
    q = sa.update(items).where(items.c.id == item_id)
    if expected_seq is not None:
        q = q.where(items.c.seq == expected_seq)
    res = s.execute(
        q.values(
            status=status,
            rule=rule,
            error_code=error_code,
            error_message=_trim(error_message),
            review_id=review_id,
            updated_at=time.time(),
        )
    )
    return res.rowcount == 1


_OUTCOME_KEYS = ("status", "rule", "error_code", "error_message", "review_id")


def set_item_outcomes(s: Session, outcomes: Iterable[dict]) -> None:
    """Bulk `set_item_outcome`: dicts with item_id, status and optionally rule,
    error_code, error_message, review_id, expected_seq.

    No count is returned: executemany row counts are not reliable across drivers;
    re-read with `get_items` when the caller must know which ones a newer change beat.
    """
    now = time.time()
    plain: list[dict] = []
    guarded: list[dict] = []
    for o in outcomes:
        _check(o["status"], ITEM_STATUSES, "item status")
        p = {f"p_{k}": o.get(k) for k in _OUTCOME_KEYS}
        p["p_error_message"] = _trim(p["p_error_message"])
        p["p_id"] = o["item_id"]
        p["p_now"] = now
        if o.get("expected_seq") is not None:
            p["p_seq"] = o["expected_seq"]
            guarded.append(p)
        else:
            plain.append(p)
    values = {k: sa.bindparam(f"p_{k}") for k in _OUTCOME_KEYS}
    values["updated_at"] = sa.bindparam("p_now")
    base = sa.update(items).where(items.c.id == sa.bindparam("p_id")).values(**values)
    for chunk in _chunks(plain):
        s.execute(base, list(chunk))
    guarded_stmt = base.where(items.c.seq == sa.bindparam("p_seq"))
    for chunk in _chunks(guarded):
        s.execute(guarded_stmt, list(chunk))


def count_items_by_status(s: Session, connection_id: str, *, kind: str | None = "contacts") -> dict[str, int]:
    """Items per status, of one kind (None: every kind)."""
    q = sa.select(items.c.status, sa.func.count()).where(items.c.connection_id == connection_id)
    if kind is not None:
        q = q.where(items.c.kind == kind)
    rows = s.execute(
        q
        .group_by(items.c.status)
    )
    return {status: n for status, n in rows}


def restage_quarantined(s: Session, connection_id: str, item_ids: Iterable[int] | None = None,
                        *, kind: str = "contacts") -> int:
    """Put quarantined items back in the queue (a person asked for a retry)."""
    values = {
        "status": "pending",
        "attempts": items.c.attempts + 1,
        "seq": items.c.seq + 1,
        "rule": None,
        "error_code": None,
        "error_message": None,
        "updated_at": time.time(),
    }
    base = sa.update(items).where(items.c.connection_id == connection_id, items.c.kind == kind,
                                  items.c.status == "quarantined")
    if item_ids is None:
        return s.execute(base.values(**values)).rowcount
    total = 0
    for chunk in _chunks(list(item_ids)):
        total += s.execute(base.where(items.c.id.in_(chunk)).values(**values)).rowcount
    return total


# --- links ------------------------------------------------------------------------


def _links_by(s: Session, column: sa.Column, connection_id: str, ids: Iterable[str], kind: str) -> dict[str, Row]:
    wanted = list(dict.fromkeys(ids))
    out: dict[str, Row] = {}
    for chunk in _chunks(wanted):
        q = sa.select(links).where(links.c.connection_id == connection_id, links.c.kind == kind, column.in_(chunk))
        out.update((getattr(r, column.name), r) for r in s.execute(q))
    return out


def get_links_by_mailbox_ids(s: Session, connection_id: str, ids: Iterable[str],
                             *, kind: str = "contacts") -> dict[str, Row]:
    return _links_by(s, links.c.mailbox_id, connection_id, ids, kind)


def get_links_by_platform_ids(s: Session, connection_id: str, ids: Iterable[str],
                              *, kind: str = "contacts") -> dict[str, Row]:
    return _links_by(s, links.c.platform_id, connection_id, ids, kind)


def get_link(s: Session, link_id: int) -> Row | None:
    return s.execute(sa.select(links).where(links.c.id == link_id)).first()


_LINK_FIELDS = (
    "org_id",
    "connection_id",
    "kind",
    "mailbox_id",
    "platform_id",
    "snapshot",
    "mailbox_hash",
    "platform_hash",
    "mailbox_etag",
    "platform_etag",
)


def save_links(s: Session, specs: Sequence[dict], *, skip_conflicts: bool = False) -> list[int | None]:
    """Insert (no "id") or update (with "id") links; returns their ids in input order.

    Each spec holds the link columns (`snapshot` as the kind's model or its dict) and
    optionally "keys": the snapshot's blocking keys, which replace the stored ones.
    A new link for a pair that is already linked updates that link (a repeated
    write). A link whose mailbox or platform id is linked to another record raises
    `LinkConflict`; with `skip_conflicts`, it is left out and its id is None.
    """
    now = time.time()
    specs = _settle_link_conflicts(s, specs, skip_conflicts)
    new_rows: list[dict] = []
    new_pos: list[int] = []
    ids: list[int | None] = [None] * len(specs)
    key_sets: dict[int, list[str]] = {}
    try:
        for pos, spec in enumerate(specs):
            if spec is None:
                continue
            values = {k: spec[k] for k in _LINK_FIELDS if k in spec}
            if "snapshot" in values:
                values["snapshot"] = _json(values["snapshot"])
            if spec.get("id") is not None:
                res = s.execute(
                    sa.update(links).where(links.c.id == spec["id"]).values(**values, updated_at=now)
                )
                if res.rowcount != 1:
                    raise PreconditionFailed("link no longer exists", detail={"link_id": spec["id"]})
                ids[pos] = spec["id"]
            else:
                values.setdefault("mailbox_etag", None)
                values.setdefault("platform_etag", None)
                new_rows.append({**values, "created_at": now, "updated_at": now})
                new_pos.append(pos)
        if new_rows:
            stmt = sa.insert(links).returning(links.c.id, sort_by_parameter_order=True)
            for start in range(0, len(new_rows), CHUNK):
                chunk = new_rows[start : start + CHUNK]
                got = s.execute(stmt, chunk).scalars().all()
                for pos, link_id in zip(new_pos[start : start + CHUNK], got, strict=True):
                    ids[pos] = link_id
    except sa.exc.IntegrityError as exc:
        if _is_unique_violation(exc):
            raise LinkConflict("a concurrent writer linked one of these records first") from None
        raise
    for pos, spec in enumerate(specs):
        if spec is not None and spec.get("keys") is not None:
            key_sets[ids[pos]] = sorted(set(spec["keys"]))
    _replace_link_keys(s, key_sets)
    return [None if i is None else int(i) for i in ids]


def _settle_link_conflicts(s: Session, specs: Sequence[dict], skip: bool) -> list[dict | None]:
    """Read the links these specs touch and decide each spec before writing any.

    The unique constraints stay the last word (a concurrent writer raises
    LinkConflict from the insert); this read turns the common cases into answers:
    a pair linked already is that link again, a record linked elsewhere is a conflict.
    """
    for spec in specs:
        unknown = set(spec) - set(_LINK_FIELDS) - {"id", "keys"}
        if unknown:
            raise Fatal(f"unknown link fields: {sorted(unknown)}")
    by_conn: dict[tuple[str, str], list[int]] = {}
    for pos, spec in enumerate(specs):
        if spec.get("connection_id") is not None:
            by_conn.setdefault((spec["connection_id"], spec.get("kind") or "contacts"), []).append(pos)
    taken_m: dict[tuple[tuple[str, str], str], int] = {}
    taken_p: dict[tuple[tuple[str, str], str], int] = {}
    for scope, positions in by_conn.items():
        cid, kind = scope
        for row in get_links_by_mailbox_ids(s, cid, [specs[p]["mailbox_id"] for p in positions
                                                     if specs[p].get("mailbox_id")], kind=kind).values():
            taken_m[(scope, row.mailbox_id)] = int(row.id)
        for row in get_links_by_platform_ids(s, cid, [specs[p]["platform_id"] for p in positions
                                                      if specs[p].get("platform_id")], kind=kind).values():
            taken_p[(scope, row.platform_id)] = int(row.id)
    out: list[dict | None] = []
    for spec in specs:
        cid = (spec["connection_id"], spec.get("kind") or "contacts") if spec.get("connection_id") else None
        own = spec.get("id")
        m_holder = taken_m.get((cid, spec.get("mailbox_id")))
        p_holder = taken_p.get((cid, spec.get("platform_id")))
        if own is None and m_holder is not None and m_holder == p_holder:
            spec = {**spec, "id": m_holder}  # the same pair, written again
            own = m_holder
        holders = {h for h in (m_holder, p_holder) if h is not None}
        if holders - ({own} if own is not None else set()):
            if not skip:
                raise LinkConflict("a record in this link is linked to another record on this connection")
            out.append(None)
            continue
        if own is not None:
            # the link's previous ids may be freed (an id change); its new ones are taken now
            for k, v in list(taken_m.items()):
                if v == own:
                    del taken_m[k]
            for k, v in list(taken_p.items()):
                if v == own:
                    del taken_p[k]
        marker = own if own is not None else -1 - len(out)  # claims for new links in this batch
        if spec.get("mailbox_id") and cid is not None:
            taken_m[(cid, spec["mailbox_id"])] = marker
        if spec.get("platform_id") and cid is not None:
            taken_p[(cid, spec["platform_id"])] = marker
        out.append(spec)
    return out


def _replace_link_keys(s: Session, key_sets: dict[int, list[str]]) -> None:
    if not key_sets:
        return
    for chunk in _chunks(list(key_sets)):
        s.execute(sa.delete(link_keys).where(link_keys.c.link_id.in_(chunk)))
    insert_rows(s, link_keys, ("link_id", "key"),
                [(link_id, key) for link_id, keys in key_sets.items() for key in keys])


def save_link(
    s: Session,
    *,
    id: int | None = None,
    keys: Iterable[str] | None = None,
    **fields: Any,
) -> int:
    """One link; see `save_links` (raises LinkConflict)."""
    spec = dict(fields)
    if id is not None:
        spec["id"] = id
    if keys is not None:
        spec["keys"] = list(keys)
    link_id = save_links(s, [spec])[0]
    assert link_id is not None
    return link_id


def delete_link(s: Session, link_id: int) -> bool:
    # Explicit as well as ON DELETE CASCADE: correct even on a SQLite connection
    # opened without foreign_keys=ON.
    s.execute(sa.delete(link_keys).where(link_keys.c.link_id == link_id))
    return s.execute(sa.delete(links).where(links.c.id == link_id)).rowcount == 1


def link_keys_for(s: Session, link_ids: Iterable[int]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for chunk in _chunks(list(dict.fromkeys(link_ids))):
        for link_id, key in s.execute(
            sa.select(link_keys.c.link_id, link_keys.c.key).where(link_keys.c.link_id.in_(chunk))
        ):
            out.setdefault(link_id, set()).add(key)
    return out


def links_sharing_keys(s: Session, connection_id: str, keys: Iterable[str], *, kind: str = "contacts") -> list[Row]:
    """Links on this connection whose snapshot shares a blocking key: duplicate candidates."""
    found: dict[int, Row] = {}
    for chunk in _chunks(sorted(set(keys))):
        sub = sa.select(link_keys.c.link_id).where(link_keys.c.key.in_(chunk))
        q = sa.select(links).where(links.c.connection_id == connection_id, links.c.kind == kind,
                                   links.c.id.in_(sub))
        for r in s.execute(q):
            found[r.id] = r
    return [found[i] for i in sorted(found)]


def count_links(s: Session, connection_id: str, *, kind: str | None = "contacts") -> int:
    q = sa.select(sa.func.count()).select_from(links).where(links.c.connection_id == connection_id)
    if kind is not None:
        q = q.where(links.c.kind == kind)
    return s.execute(q).scalar_one()


# --- reviews ----------------------------------------------------------------------


def open_review(
    s: Session,
    *,
    connection_id: str,
    kind: str,
    link_id: int | None = None,
    mailbox_id: str | None = None,
    platform_id: str | None = None,
    fields: Iterable[str] = (),
    detail: dict | None = None,
    item_kind: str = "contacts",
) -> int:
    """A pending human decision; its content lives here, the workflow only sees the id.

    `kind` is the question (conflict, duplicate); `item_kind` the kind of data it is about.
    """
    _check(kind, REVIEW_KINDS, "review kind")
    return s.execute(
        sa.insert(reviews)
        .values(
            connection_id=connection_id,
            kind=kind,
            item_kind=item_kind,
            status="open",
            link_id=link_id,
            mailbox_id=mailbox_id,
            platform_id=platform_id,
            fields=list(fields),
            detail=detail or {},
            created_at=time.time(),
        )
        .returning(reviews.c.id)
    ).scalar_one()


def get_review(s: Session, review_id: int) -> Row | None:
    return s.execute(sa.select(reviews).where(reviews.c.id == review_id)).first()


def resolve_review(s: Session, review_id: int, resolution: dict) -> bool:
    """Record a person's decision; only an open review takes one (a repeat signal is a no-op)."""
    _check(resolution.get("choice"), RESOLUTION_CHOICES, "resolution choice")
    res = s.execute(
        sa.update(reviews)
        .where(reviews.c.id == review_id, reviews.c.status == "open")
        .values(status="resolved", resolution=resolution, resolved_at=time.time())
    )
    return res.rowcount == 1


def set_review_status(s: Session, review_id: int, status: str, expected_status: str | None = None) -> bool:
    _check(status, REVIEW_STATUSES, "review status")
    q = sa.update(reviews).where(reviews.c.id == review_id)
    if expected_status is not None:
        q = q.where(reviews.c.status == expected_status)
    return s.execute(q.values(status=status)).rowcount == 1


def open_reviews(s: Session, connection_id: str, kind: str | None = None, *,
                 item_kind: str | None = None) -> list[Row]:
    """Open reviews, of one question (`kind`) and of one kind of data (`item_kind`) when given."""
    q = (
        sa.select(reviews)
        .where(reviews.c.connection_id == connection_id, reviews.c.status == "open")
        .order_by(reviews.c.id)
    )
    if kind is not None:
        q = q.where(reviews.c.kind == _check(kind, REVIEW_KINDS, "review kind"))
    if item_kind is not None:
        q = q.where(reviews.c.item_kind == item_kind)
    return list(s.execute(q))


def open_review_ids(s: Session, connection_id: str, kind: str, limit: int | None = None, *,
                    item_kind: str = "contacts") -> list[int]:
    q = (
        sa.select(reviews.c.id)
        .where(reviews.c.connection_id == connection_id, reviews.c.status == "open",
               reviews.c.kind == _check(kind, REVIEW_KINDS, "review kind"), reviews.c.item_kind == item_kind)
        .order_by(reviews.c.id)
    )
    if limit is not None:
        q = q.limit(limit)
    return [int(i) for i in s.execute(q).scalars()]


def reviews_for_items(
    s: Session,
    connection_id: str,
    *,
    mailbox_ids: Iterable[str] = (),
    platform_ids: Iterable[str] = (),
    statuses: Iterable[str] = ("open", "resolved"),
) -> list[Row]:
    """Reviews touching these items (by either side's id), e.g. to supersede them."""
    statuses = [_check(st, REVIEW_STATUSES, "review status") for st in statuses]
    found: dict[int, Row] = {}
    for column, ids in ((reviews.c.mailbox_id, mailbox_ids), (reviews.c.platform_id, platform_ids)):
        for chunk in _chunks(list(dict.fromkeys(ids))):
            q = sa.select(reviews).where(
                reviews.c.connection_id == connection_id, reviews.c.status.in_(statuses), column.in_(chunk)
            )
            for r in s.execute(q):
                found[r.id] = r
    return [found[i] for i in sorted(found)]


# --- actions ----------------------------------------------------------------------

_ACTION_INPUT = ("item_mailbox_id", "item_platform_id", "link_id", "decision", "status", "idempotency_key")
_ACTION_UPDATABLE = ("status", "result", "error_code", "error_message", "link_id", "decision")


def add_actions(s: Session, connection_id: str, cycle_id: str, planned: Sequence[dict],
                *, kind: str = "contacts") -> list[int]:
    """Persist a cycle's planned writes; keys already present are left untouched.

    Returns the action ids in input order (existing ones for repeated keys), so a
    re-run planning activity hands the executor the same actions it did the first time.
    """
    now = time.time()
    rows = []
    for a in planned:
        unknown = set(a) - set(_ACTION_INPUT)
        if unknown:
            raise Fatal(f"unknown action fields: {sorted(unknown)}")
        if not a.get("idempotency_key"):
            raise Fatal("an action needs an idempotency_key")
        rows.append(
            {
                "connection_id": connection_id,
                "kind": kind,
                "cycle_id": cycle_id,
                "item_mailbox_id": a.get("item_mailbox_id"),
                "item_platform_id": a.get("item_platform_id"),
                "link_id": a.get("link_id"),
                "decision": a.get("decision") or {},
                "status": _check(a.get("status", "planned"), ACTION_STATUSES, "action status"),
                "idempotency_key": a["idempotency_key"],
                "created_at": now,
                "updated_at": now,
            }
        )
    if not rows:
        return []
    stmt = _insert(s, actions).on_conflict_do_nothing(index_elements=[actions.c.idempotency_key])
    for chunk in _chunks(rows):
        s.execute(stmt, list(chunk))
    keys = [r["idempotency_key"] for r in rows]
    by_key: dict[str, int] = {}
    for chunk in _chunks(list(dict.fromkeys(keys))):
        by_key.update(
            s.execute(
                sa.select(actions.c.idempotency_key, actions.c.id).where(actions.c.idempotency_key.in_(chunk))
            ).all()
        )
    return [by_key[k] for k in keys]


def get_action(s: Session, action_id: int) -> Row | None:
    return s.execute(sa.select(actions).where(actions.c.id == action_id)).first()


def actions_by_status(
    s: Session, connection_id: str, statuses: Iterable[str], cycle_id: str | None = None, *, kind: str = "contacts"
) -> list[Row]:
    statuses = [_check(st, ACTION_STATUSES, "action status") for st in statuses]
    q = (
        sa.select(actions)
        .where(actions.c.connection_id == connection_id, actions.c.kind == kind, actions.c.status.in_(statuses))
        .order_by(actions.c.id)
    )
    if cycle_id is not None:
        q = q.where(actions.c.cycle_id == cycle_id)
    return list(s.execute(q))


def update_action(s: Session, action_id: int, *, expected_status: str | None = None, **fields: Any) -> bool:
    """Move an action along; `expected_status` makes the step a compare-and-set."""
    unknown = set(fields) - set(_ACTION_UPDATABLE)
    if unknown:
        raise Fatal(f"unknown action fields: {sorted(unknown)}")
    if "status" in fields:
        _check(fields["status"], ACTION_STATUSES, "action status")
    if "error_message" in fields:
        fields["error_message"] = _trim(fields["error_message"])
    q = sa.update(actions).where(actions.c.id == action_id)
    if expected_status is not None:
        q = q.where(actions.c.status == expected_status)
    return s.execute(q.values(**fields, updated_at=time.time())).rowcount == 1


# --- audit ------------------------------------------------------------------------


def _audit_row(entry: dict, now: float) -> dict:
    unknown = set(entry) - {"org_id", "connection_id", "side", "op", "external_id", "action_id", "detail", "at",
                            "cycle_id", "kind"}
    if unknown:
        raise Fatal(f"unknown audit fields: {sorted(unknown)}")
    _check(entry["op"], AUDIT_OPS, "audit op")
    if entry.get("side") is not None:
        _check(entry["side"], SIDES, "side")
    return {
        "org_id": entry["org_id"],
        "connection_id": entry.get("connection_id"),
        "side": entry.get("side"),
        "op": entry["op"],
        "external_id": entry.get("external_id"),
        "action_id": entry.get("action_id"),
        "at": entry.get("at") or now,
        "detail": entry.get("detail") or {},
        "cycle_id": entry.get("cycle_id"),
        "kind": entry.get("kind"),
    }


def audit(
    s: Session,
    *,
    org_id: str,
    op: str,
    connection_id: str | None = None,
    side: str | None = None,
    external_id: str | None = None,
    action_id: int | None = None,
    detail: dict | None = None,
    at: float | None = None,
) -> None:
    """One write we made. `detail` holds ids, field names and counts, never values."""
    audit_many(
        s,
        [
            {
                "org_id": org_id,
                "op": op,
                "connection_id": connection_id,
                "side": side,
                "external_id": external_id,
                "action_id": action_id,
                "detail": detail,
                "at": at,
            }
        ],
    )


def audit_many(s: Session, entries: Iterable[dict]) -> int:
    now = time.time()
    rows = [_audit_row(e, now) for e in entries]
    for chunk in _chunks(rows):
        s.execute(sa.insert(audit_log), list(chunk))
    return len(rows)


def cycle_write_counts(s: Session, connection_id: str, cycle_id: str,
                       *, kind: str = "contacts") -> dict[tuple[str, str | None], int]:
    """(op, side) -> how many writes this cycle's write activity made, over all its attempts."""
    rows = s.execute(
        sa.select(audit_log.c.op, audit_log.c.side, sa.func.count())
        .where(audit_log.c.connection_id == connection_id, audit_log.c.cycle_id == cycle_id,
               sa.func.coalesce(audit_log.c.kind, "contacts") == kind)
        .group_by(audit_log.c.op, audit_log.c.side)
    )
    return {(op, side): n for op, side, n in rows}


def audit_entries(
    s: Session,
    *,
    org_id: str | None = None,
    connection_id: str | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> list[Row]:
    q = sa.select(audit_log).order_by(audit_log.c.at, audit_log.c.id)
    if org_id is not None:
        q = q.where(audit_log.c.org_id == org_id)
    if connection_id is not None:
        q = q.where(audit_log.c.connection_id == connection_id)
    if since is not None:
        q = q.where(audit_log.c.at >= since)
    if limit is not None:
        q = q.limit(limit)
    return list(s.execute(q))


# --- pending OAuth flows ----------------------------------------------------------


def put_pending_oauth(
    s: Session,
    *,
    state: str,
    provider: str,
    org_id: str,
    user_id: str,
    code_verifier: str,
    redirect_uri: str,
    ttl: float = 600.0,
) -> None:
    _check(provider, PROVIDERS, "provider")
    now = time.time()
    s.execute(
        sa.insert(pending_oauth).values(
            state=state,
            provider=provider,
            org_id=org_id,
            user_id=user_id,
            code_verifier=code_verifier,
            redirect_uri=redirect_uri,
            created_at=now,
            expires_at=now + ttl,
        )
    )


def take_pending_oauth(s: Session, state: str, now: float | None = None) -> Row | None:
    """Consume an OAuth `state` exactly once; an expired one is consumed and refused."""
    row = s.execute(
        sa.delete(pending_oauth).where(pending_oauth.c.state == state).returning(*pending_oauth.c)
    ).first()
    if row is None or row.expires_at < (now if now is not None else time.time()):
        return None
    return row


def purge_expired_oauth(s: Session, now: float | None = None) -> int:
    cutoff = now if now is not None else time.time()
    return s.execute(sa.delete(pending_oauth).where(pending_oauth.c.expires_at < cutoff)).rowcount


# --- state summary ----------------------------------------------------------------


def sync_state_summary(s: Session, connection_id: str, quarantined_limit: int = 100,
                       *, kind: str = "contacts") -> dict:
    """Counts and ids of one kind for the workflow's state query: no content, no cursor values."""
    item_counts = dict.fromkeys(ITEM_STATUSES, 0)
    item_counts.update(count_items_by_status(s, connection_id, kind=kind))
    review_counts = dict.fromkeys(REVIEW_KINDS, 0)
    review_counts.update(
        s.execute(
            sa.select(reviews.c.kind, sa.func.count())
            .where(reviews.c.connection_id == connection_id, reviews.c.item_kind == kind, reviews.c.status == "open")
            .group_by(reviews.c.kind)
        ).all()
    )
    action_counts = dict(
        s.execute(
            sa.select(actions.c.status, sa.func.count())
            .where(
                actions.c.connection_id == connection_id,
                actions.c.kind == kind,
                actions.c.status.in_(("planned", "platform_done", "mailbox_started", "deferred", "failed")),
            )
            .group_by(actions.c.status)
        ).all()
    )
    in_quarantine = (items.c.connection_id == connection_id, items.c.kind == kind, items.c.status == "quarantined")
    quarantined = [
        {"item_id": r.id, "side": r.side, "external_id": r.external_id, "error_code": r.error_code}
        for r in s.execute(
            sa.select(items.c.id, items.c.side, items.c.external_id, items.c.error_code)
            .where(*in_quarantine)
            .order_by(items.c.id)
            .limit(quarantined_limit)
        )
    ]
    by_code: dict[str, int] = {}
    for code, n in s.execute(
        sa.select(items.c.error_code, sa.func.count()).where(*in_quarantine).group_by(items.c.error_code)
    ):
        by_code[code or ""] = by_code.get(code or "", 0) + n
    skipped = (items.c.connection_id == connection_id, items.c.kind == kind, items.c.status == "skipped")
    by_rule = {rule or "": int(n) for rule, n in s.execute(
        sa.select(items.c.rule, sa.func.count()).where(*skipped).group_by(items.c.rule))}
    return {
        "items": item_counts,
        "open_reviews": review_counts,
        "quarantined_by_code": by_code,
        "skipped_by_rule": by_rule,
        "links": count_links(s, connection_id, kind=kind),
        "actions": action_counts,
        "quarantined_total": item_counts["quarantined"],
        "quarantined": quarantined,
        "cursors": {
            stream: {"updated_at": r.updated_at, "full_sync_count": r.full_sync_count}
            for stream, r in list_cursors(s, connection_id).items()
        },
    }
