"""Reconciliation reports, and the store reads a reconciliation needs.

Every function takes a Session and never commits (the caller owns the transaction).
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from store.schema import items, links, reconcile_reports
from sync.reconcile import ItemInfo, LinkPair


def link_pairs(s: Session, connection_id: str, *, kind: str = "contacts") -> list[LinkPair]:
    rows = s.execute(sa.select(links.c.id, links.c.mailbox_id, links.c.platform_id)
                     .where(links.c.connection_id == connection_id, links.c.kind == kind).order_by(links.c.id))
    return [LinkPair(int(i), m, p) for i, m, p in rows]


def item_infos(s: Session, connection_id: str, *, kind: str = "contacts") -> dict[tuple[str, str], ItemInfo]:
    """Each item's state (not its record), by (side, external id)."""
    rows = s.execute(sa.select(items.c.id, items.c.side, items.c.external_id, items.c.status, items.c.rule,
                               items.c.updated_at)
                     .where(items.c.connection_id == connection_id, items.c.kind == kind))
    return {(side, ext): ItemInfo(int(i), st, rule, float(at)) for i, side, ext, st, rule, at in rows}


def save_report(s: Session, *, org_id: str, connection_id: str | None, kind: str, status: str,
                started_at: float, counts: dict, findings: dict) -> int:
    return int(s.execute(sa.insert(reconcile_reports).values(
        org_id=org_id, connection_id=connection_id, kind=kind, status=status, started_at=started_at,
        finished_at=time.time(), counts=counts, findings=findings,
    ).returning(reconcile_reports.c.id)).scalar_one())


def get_report(s: Session, report_id: int) -> Row | None:
    return s.execute(sa.select(reconcile_reports).where(reconcile_reports.c.id == report_id)).first()


def latest_reports(s: Session, connection_id: str, limit: int = 10) -> list[Row]:
    return list(s.execute(sa.select(reconcile_reports).where(reconcile_reports.c.connection_id == connection_id)
                          .order_by(reconcile_reports.c.id.desc()).limit(limit)))


def report_json(row: Row) -> dict:
    return {"report_id": int(row.id), "org_id": row.org_id, "connection_id": row.connection_id, "kind": row.kind,
            "status": row.status, "started_at": row.started_at, "finished_at": row.finished_at,
            "counts": row.counts, "findings": row.findings}
