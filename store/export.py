"""A connection's or an organisation's synced data and audit log, streamed as JSON or CSV.

What is exported: links with their snapshots, items with their status, rule and error
code (and the record as staged), and the audit log. Rows are read in chunks from a
server-side cursor (`yield_per`) and written out one by one, so an export of any size
never sits whole in memory: `json_chunks` and `csv_chunks` are generators of text.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa

from store.schema import audit_log, connections, items, links

#: rows fetched per round trip
CHUNK = 500

LINK_COLUMNS = ("id", "org_id", "connection_id", "kind", "mailbox_id", "platform_id", "snapshot", "mailbox_hash",
                "platform_hash", "mailbox_etag", "platform_etag", "created_at", "updated_at")
ITEM_COLUMNS = ("id", "connection_id", "kind", "side", "external_id", "status", "rule", "error_code",
                "error_message", "attempts", "review_id", "received_at", "updated_at", "record")
AUDIT_COLUMNS = ("id", "org_id", "connection_id", "kind", "side", "op", "external_id", "action_id", "cycle_id",
                 "at", "detail")
SECTIONS = {"links": LINK_COLUMNS, "items": ITEM_COLUMNS, "audit_log": AUDIT_COLUMNS}
#: the JSON column of each section (a JSON document in a CSV cell)
JSON_COLUMNS = {"snapshot", "record", "detail"}
#: CSV: one table, a `section` column first, then every section's columns
CSV_COLUMNS = ("section",) + tuple(dict.fromkeys(c for cols in SECTIONS.values() for c in cols))


@dataclass(frozen=True)
class Scope:
    connection_id: str | None = None
    org_id: str | None = None

    def __post_init__(self) -> None:
        if (self.connection_id is None) == (self.org_id is None):
            raise ValueError("an export is of one connection or one organisation")

    def as_json(self) -> dict:
        return {"connection_id": self.connection_id} if self.connection_id else {"org_id": self.org_id}


def _queries(scope: Scope) -> dict[str, sa.Select]:
    if scope.connection_id is not None:
        cid = scope.connection_id
        return {
            "links": sa.select(*(links.c[c] for c in LINK_COLUMNS)).where(links.c.connection_id == cid)
            .order_by(links.c.id),
            "items": sa.select(*(items.c[c] for c in ITEM_COLUMNS)).where(items.c.connection_id == cid)
            .order_by(items.c.id),
            "audit_log": sa.select(*(audit_log.c[c] for c in AUDIT_COLUMNS)).where(audit_log.c.connection_id == cid)
            .order_by(audit_log.c.id),
        }
    org = scope.org_id
    conns = sa.select(connections.c.id).where(connections.c.org_id == org)
    return {
        "links": sa.select(*(links.c[c] for c in LINK_COLUMNS)).where(links.c.org_id == org).order_by(links.c.id),
        "items": sa.select(*(items.c[c] for c in ITEM_COLUMNS)).where(items.c.connection_id.in_(conns))
        .order_by(items.c.id),
        "audit_log": sa.select(*(audit_log.c[c] for c in AUDIT_COLUMNS)).where(audit_log.c.org_id == org)
        .order_by(audit_log.c.id),
    }


def rows(sessions, scope: Scope) -> Iterator[tuple[str, dict]]:
    """(section, row as a dict) for everything in scope, section by section, streamed."""
    with sessions() as s:
        for section, q in _queries(scope).items():
            for row in s.execute(q.execution_options(yield_per=CHUNK)):
                yield section, dict(row._mapping)


def exists(sessions, scope: Scope) -> bool:
    """Whether the store knows the connection or organisation (an unknown one is an error, not an empty file)."""
    with sessions() as s:
        q = (sa.select(connections.c.id).where(connections.c.id == scope.connection_id) if scope.connection_id
             else sa.select(connections.c.id).where(connections.c.org_id == scope.org_id))
        if s.execute(q.limit(1)).first() is not None:
            return True
        if scope.org_id is not None:
            from store.schema import organisations
            return s.execute(sa.select(organisations.c.id).where(organisations.c.id == scope.org_id)).first() is not None
        return False


def json_chunks(sessions, scope: Scope) -> Iterator[str]:
    """One JSON document, `{"scope", "exported_at", "links": [...], "items": [...], "audit_log": [...]}`,
    written a row at a time."""
    yield '{"scope": ' + json.dumps(scope.as_json()) + ', "exported_at": ' + json.dumps(time.time())
    with sessions() as s:
        for section, q in _queries(scope).items():
            yield f', "{section}": ['
            sep = ""
            for row in s.execute(q.execution_options(yield_per=CHUNK)):
                yield sep + json.dumps(dict(row._mapping), ensure_ascii=False, default=str)
                sep = ", "
            yield "]"
    yield "}\n"


def csv_chunks(sessions, scope: Scope) -> Iterator[str]:
    """One CSV table: a header, then a line per row with its `section`; JSON columns
    (snapshot, record, detail) hold a JSON document; absent columns are empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")

    def take() -> str:
        out = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return out

    writer.writerow(CSV_COLUMNS)
    yield take()
    for section, row in rows(sessions, scope):
        cells = []
        for col in CSV_COLUMNS:
            if col == "section":
                cells.append(section)
            elif col not in row or row[col] is None:
                cells.append("")
            elif col in JSON_COLUMNS:
                cells.append(json.dumps(row[col], ensure_ascii=False))
            else:
                cells.append(row[col])
        writer.writerow(cells)
        yield take()


def chunks(sessions, scope: Scope, fmt: str) -> Iterator[str]:
    if fmt == "json":
        return json_chunks(sessions, scope)
    if fmt == "csv":
        return csv_chunks(sessions, scope)
    raise ValueError(f"unknown export format {fmt!r} (csv or json)")
