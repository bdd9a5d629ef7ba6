"""Reconciliation activities: compare both ends of a connection independently of the
sync's own bookkeeping, store the report, repair what policy allows.

Each end is read in full through its own client: the mailbox through its connector (a
full listing: `list_changes(None)`, which leaves the sync's stored cursor alone), the
platform through its adapter (its feed from the start: every live record). The store's
links only say which pairs are meant to match. The comparison is `sync.reconcile`.

Repairs re-stage items, nothing more: the next cycle merges them with the usual rules
(a differing pair is re-merged, a linked record gone becomes a deletion handled by the
delete policy, a record with no partner is matched or created). Duplicates and
unfinished items are listed for a person. The policy is the connection's (or its
organisation's) sync setting `reconcile_repair`: "restage" (default) or "report".

What returns to the workflow is `ReconcileCounts`: counts and field names only.
"""

from __future__ import annotations

import time

from temporalio import activity

from activities.errors import to_application_error
from activities.listing import full_listing
from activities.pipeline import KindPipeline, mailbox_holds_of, as_activity
from models.errors import ConnectorError, Fatal
from models.reconcile import ReconcileCounts, ReconcileRequest
from store import reconcile as reports
from store import repo
from sync.matching import Thresholds
from sync.policy import mailbox_settings
from sync.reconcile import compare

#: items pending or deferred longer than this are reported as not final (setting `reconcile_stale_s`)
STALE_S = 3600.0
REPAIR_POLICIES = ("restage", "report")


def _heartbeat(*details) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)



def _as_held(pipe: KindPipeline, info, settings):
    """Both records of a pair as the sync core compares them: the platform's record is
    the base, so what the mailbox cannot hold (or a direction keeps apart) is no difference."""
    holds = mailbox_holds_of(info.provider, settings)

    def as_held(m, p):
        aligned = pipe.rules.align(p, m, p, settings, holds)
        return aligned.mailbox, aligned.platform
    return as_held

class ReconcileActivities:
    def __init__(self, sessions, pipelines: dict) -> None:
        self.sessions = sessions
        self.pipelines = pipelines

    def connections(self, org_id: str) -> list[str]:
        """The organisation's active connections (ids only)."""
        with self.sessions() as s:
            return [r.id for r in repo.list_connections(s, org_id, status="active")]

    # -- reading both ends --------------------------------------------------------
    @staticmethod
    def _list_mailbox(mailbox, wait) -> dict:
        return full_listing(lambda token: mailbox.list_changes(None, token), wait=wait)

    @staticmethod
    def _list_platform(platform, org_id: str, wait) -> dict:
        return full_listing(lambda cursor: platform.changes_since(org_id, cursor), wait=wait)

    # -- one run ------------------------------------------------------------------
    def run(self, req: ReconcileRequest) -> ReconcileCounts:
        started = time.time()
        cid, kind = req.connection_id, req.kind
        pipe = self.pipelines.get(kind)
        with self.sessions() as s:
            conn = repo.get_connection(s, cid)
            if conn is None:
                raise to_application_error(Fatal(f"unknown connection {cid}"))
            org_id = conn.org_id
        if not isinstance(pipe, KindPipeline):
            # mail and send are logged or sent once, not kept equal record by record
            counts = ReconcileCounts(connection_id=cid, kind=kind, applicable=False)
            with self.sessions.begin() as s:
                counts.report_id = reports.save_report(
                    s, org_id=org_id, connection_id=cid, kind=kind, status="not_applicable", started_at=started,
                    counts=counts.model_dump(mode="json"), findings={})
            return counts
        with self.sessions() as s:
            info, settings = pipe._connection(s, cid)
            org = repo.get_org(s, org_id)
            raw = mailbox_settings(org.settings, conn.settings)
        policy = raw.get("reconcile_repair", "restage")
        if policy not in REPAIR_POLICIES:
            policy = "report"
        stale_s = float(raw.get("reconcile_stale_s", STALE_S))
        try:
            mailbox = self._list_mailbox(pipe.mailbox_for(info), pipe.wait)
            platform = self._list_platform(pipe.platform, org_id, pipe.wait)
        except ConnectorError as exc:
            raise to_application_error(exc) from None
        with self.sessions() as s:
            pairs = reports.link_pairs(s, cid, kind=kind)
            item_state = reports.item_infos(s, cid, kind=kind)

        scope = settings.platform_scope

        def in_scope(pid: str) -> bool:
            return scope == "all" or (scope == "owned" and platform[pid].owner == settings.owner)

        findings = compare(
            mailbox={k: r.content for k, r in mailbox.items()},
            platform={k: r.content for k, r in platform.items()},
            links=pairs, in_scope=in_scope, items=item_state, new_index=pipe.rules.for_settings(settings).new_index,
            thresholds=Thresholds(auto=settings.auto_threshold, review=settings.review_threshold),
            now=time.time(), stale_s=stale_s, as_held=_as_held(pipe, info, settings))
        _heartbeat("compared")

        restage: dict[str, dict] = {"mailbox": {}, "platform": {}}
        if req.repair and policy == "restage":
            for d in findings.differing:
                restage["mailbox"][d["mailbox_id"]] = mailbox[d["mailbox_id"]]
                restage["platform"][d["platform_id"]] = platform[d["platform_id"]]
                d["repair"] = "restaged"
            for m in findings.missing:
                if not m["repairable"]:
                    m["repair"] = None
                    continue
                if m["type"] == "linked_gone":
                    for side in m["gone"]:
                        ext = m[f"{side}_id"]
                        restage[side][ext] = pipe.rules.record(side=side, external_id=ext, deleted=True)
                else:
                    side, ext = m["side"], m["external_id"]
                    restage[side][ext] = (mailbox if side == "mailbox" else platform)[ext]
                m["repair"] = "restaged"
        restaged = 0
        counts = ReconcileCounts(
            connection_id=cid, kind=kind, mailbox_records=len(mailbox), platform_records=len(platform),
            links=len(pairs), found=findings.counts())
        for d in findings.differing:
            for name in d["fields"]:
                counts.differing_fields[name] = counts.differing_fields.get(name, 0) + 1
        with self.sessions.begin() as s:
            batch = f"reconcile:{cid}:{int(started * 1000)}"
            for side, recs in restage.items():
                if recs:
                    restaged += repo.stage_records(s, cid, side, list(recs.values()), batch, kind=kind)
            counts.restaged = restaged
            counts.listed = sum(1 for cat in findings.as_json().values() for f in cat if not f.get("repair"))
            counts.report_id = reports.save_report(
                s, org_id=org_id, connection_id=cid, kind=kind, status="done", started_at=started,
                counts={**counts.model_dump(mode="json"), "repair_policy": policy if req.repair else "report"},
                findings=findings.as_json())
        return counts

    def all(self) -> list:
        return [as_activity("reconcile.connections", self.connections), as_activity("reconcile.run", self.run)]
