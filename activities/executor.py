"""Carry out planned decisions, resumably.

Each action row moves planned -> platform_done -> (mailbox_started) -> done, and
every move is committed before the next side is touched, so a worker killed at any
point resumes where it stopped (an action that writes to one side only skips the
moves that mean nothing for it):

- platform writes carry the action's idempotency key: a replay returns the first result;
- a mailbox create is marked `mailbox_started` before it is sent and carries a
  marker; on resume the marker is looked up before creating again (no duplicate);
- mailbox updates are idempotent by content; deletes treat "already gone" as done.

Per-item failures never stop the batch: a platform validation error marks the
action `rejected` (handle_rejections fixes or quarantines it); a stale etag or a
vanished target re-stages the item so the next cycle re-reads and re-merges it.
Only errors that concern the whole connection (rate limits, outages, auth) escape,
after everything done so far is committed.

A chunk's mailbox requests travel while the next chunk's platform writes are made
(one sending thread; the store is written from the activity's own): with 0.5 s a
People request, that took the first sync of 10,000 x 10,000 from 69.5 / 68.1 s to
58.7 / 59.6 s (`python -m bench.sync --people-latency 0.5 --initial-only`).
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from activities.pacing import Pacer
from models.errors import ConnectorError, NotFound, PreconditionFailed, RateLimited, ValidationRejected
from connectors.protocols import MailboxSide, PlatformSide, WriteRequest, WriteResult
from models.record import SideRecord
from models.plan import Decision, Write
from models.workflow import RejectionSummary, WriteSummary
from store import cycle, mirror, repo
from sync.kinds import KindRules
from sync.policy import SyncSettings

#: actions carried out and committed together. Each commit rewrites every index page
#: the chunk touched, and blocking keys land all over their indexes: 1,000 instead of
#: 200 took the 10,000-contact first write from 49.9 s to 43.0 s (`python -m bench.sync`).
#: A crash redoes at most one chunk, idempotently; a chunk's provider calls are a few
#: batch requests, well inside the heartbeat timeout (rate-limit waits heartbeat).
CHUNK = 1000

#: an action's status once the platform phase wrote its platform side (done: it had
#: nothing for the mailbox)
PLATFORM_WRITTEN = ("platform_done", "done")


class _Work:
    __slots__ = ("action_id", "key", "decision", "status", "result")

    def __init__(self, row, rules: KindRules) -> None:
        self.action_id = int(row.id)
        self.key = row.idempotency_key
        self.decision = rules.decision.model_validate(row.decision)
        self.status = row.status
        self.result = dict(row.result or {})


class _Effects:
    """A chunk's store bookkeeping, written in a few bulk statements at the end of its
    transaction instead of one statement per item (the write phase's main cost)."""

    def __init__(self, kind: str, org_id: str) -> None:
        self.kind = kind
        self.org_id = org_id
        self.actions: list[dict] = []
        self.outcomes: list[dict] = []
        self.audits: list[dict] = []
        self.unlink: list[int] = []
        self.links: list[dict] = []
        self.link_owners: list[tuple[int, list]] = []  # (action id, item keys) per link spec
        self.link_audits: list[dict] = []
        self.reviews: list[tuple[int, str]] = []
        self.restage: dict[str, list[SideRecord]] = {"mailbox": [], "platform": []}
        self.mirrored: list[mirror.MirrorEntry] = []  # platform records this chunk wrote

    def action(self, action_id: int, **fields) -> None:
        self.actions.append({"id": action_id, **fields})

    def flush(self, s, connection_id: str, batch_id: str) -> list[int | None]:
        for side, records in self.restage.items():
            if records:
                repo.stage_records(s, connection_id, side, records, batch_id, kind=self.kind)
        cycle.delete_links(s, self.unlink)
        link_ids = repo.save_links(s, self.links, skip_conflicts=True) if self.links else []
        for entry, link_id, (action_id, keys) in zip(self.link_audits, link_ids, self.link_owners):
            if link_id is None:
                self._link_conflict(action_id, keys)
            elif entry is not None:
                entry["detail"] = {**entry["detail"], "link_id": int(link_id)}
                self.audits.append(entry)
        if self.audits:
            repo.audit_many(s, self.audits)
        cycle.set_item_outcomes_by_key(s, connection_id, self.outcomes, kind=self.kind)
        for review_id, status in self.reviews:
            repo.set_review_status(s, review_id, status)
        cycle.update_actions(s, self.actions)
        if self.mirrored:
            mirror.note_written(s, self.org_id, self.kind, self.mirrored)
        self.__init__(self.kind, self.org_id)  # the chunk is written: start the next one empty
        return link_ids

    def _link_conflict(self, action_id: int, keys: list) -> None:
        """The writes landed but a record is linked to another one here already: not a
        stale etag (nothing to re-read) and not a reason to fail the batch. The action
        fails visibly and its items wait in quarantine for a person."""
        self.actions = [a for a in self.actions if a["id"] != action_id]
        self.outcomes = [o for o in self.outcomes if (o["side"], o["external_id"]) not in set(keys)]
        self.action(action_id, status="failed", error_code="link_conflict",
                    error_message="a record is already linked to another record on this connection")
        self.outcomes += [{"side": side, "external_id": ext, "status": "quarantined", "rule": "link_conflict",
                           "error_code": "link_conflict",
                           "error_message": "already linked to another record on this connection"}
                          for side, ext in keys]


def _writes(d: Decision, side: str) -> list[tuple[int, Write]]:
    return [(i, w) for i, w in enumerate(d.writes) if w.side == side]


class Executor:
    def __init__(self, sessions, rules: KindRules, platform: PlatformSide, mailbox: MailboxSide, info,
                 settings: SyncSettings, cycle_id: str | None = None, wait: Callable | None = None):
        self.sessions = sessions
        self.rules = rules
        self.kind = rules.name
        self.cycle_id = cycle_id
        self.platform = platform
        self.mailbox = mailbox
        self.info = info
        self.settings = settings
        self.summary = WriteSummary()
        self.fx = _Effects(self.kind, info.org_id)
        self.done_items = 0
        self.heartbeat: Callable = lambda *a: None
        self.pacer = Pacer(lambda: (self.done_items,), sleep=wait)
        #: the mailbox sends' own wait budget: they run beside the platform's writes
        self.mailbox_pacer = Pacer(lambda: (self.done_items,), sleep=wait)
        self._platform_calls0 = getattr(platform, "calls_made", 0)
        self._mailbox_calls0 = mailbox.calls_made

    # ------------------------------------------------------------------ run
    def run(self, heartbeat: Callable = lambda *a: None) -> WriteSummary:
        """Carry out every unfinished action of the connection, whichever cycle planned it."""
        self.heartbeat = heartbeat
        with self.sessions() as s:
            rows = repo.actions_by_status(s, self.info.connection_id, ["planned", "platform_done", "mailbox_started"],
                                          kind=self.kind)
            work = [_Work(r, self.rules) for r in rows]
        # A chunk's mailbox requests are sent while the next chunk's platform writes are
        # made: a provider's round trips (sent one after another, as Google asks of
        # mutations for one user) then cost no time of their own. Only the sending is
        # moved to the other thread; the store is written from this one.
        in_flight: list[Callable[[], None]] = []  # the previous chunk's mailbox sends, at most one
        with ThreadPoolExecutor(1, thread_name_prefix="mailbox-send") as sender:
            try:
                for i in range(0, len(work), CHUNK):
                    chunk = work[i:i + CHUNK]
                    self._platform_phase([w for w in chunk if w.status == "planned"])
                    if in_flight:
                        in_flight.pop()()
                    in_flight.append(self._mailbox_phase(
                        [w for w in chunk if w.status in ("platform_done", "mailbox_started")], sender))
                    self.done_items = i + len(chunk)
                    heartbeat(self.done_items)
            finally:
                if in_flight:
                    in_flight.pop()()  # what was sent is recorded, even when a platform write escaped
        self.summary.calls = {
            "platform": getattr(self.platform, "calls_made", 0) - self._platform_calls0,
            "mailbox": self.mailbox.calls_made - self._mailbox_calls0,
        }
        if self.cycle_id is not None:
            self._count_whole_cycle()
        return self.summary

    def _count_whole_cycle(self) -> None:
        """Writes are counted from the audit log, where each is recorded once with the
        cycle that made it: an attempt that follows a failed one reports the cycle's
        work, not just its own share."""
        with self.sessions() as s:
            done = repo.cycle_write_counts(s, self.info.connection_id, self.cycle_id, kind=self.kind)
        for op, bucket in (("create", self.summary.created), ("update", self.summary.updated),
                           ("delete", self.summary.deleted)):
            bucket.clear()
            bucket.update({side: n for (o, side), n in done.items() if o == op and side})
        self.summary.linked = done.get(("link", None), 0)
        self.summary.unlinked = done.get(("unlink", None), 0)

    # -------------------------------------------------------- platform side
    def _platform_phase(self, work: list[_Work]) -> None:
        upserts: list[WriteRequest] = []
        deletes: list[WriteRequest] = []
        for w in work:
            for idx, wr in _writes(w.decision, "platform"):
                req = WriteRequest(key=f"{w.key}:p{idx}", content=wr.content, external_id=wr.external_id,
                                   etag=wr.etag, owner=self.settings.owner or None, keep=tuple(wr.keep))
                (deletes if wr.op == "delete" else upserts).append(req)
        results: dict[str, WriteResult] = {}
        escape: ConnectorError | None = None
        try:
            # Idempotent by key: a call refused by a rate limit is simply sent again.
            if upserts:
                results.update({r.key: r for r in self.pacer.idempotent(self.platform.upsert_many, self.info.org_id, upserts)})
            if deletes:
                results.update({r.key: r for r in self.pacer.idempotent(self.platform.delete_many, self.info.org_id, deletes)})
        except ConnectorError as exc:  # whole-call failure: nothing of this chunk is known done
            escape = exc
        with self.sessions.begin() as s:
            # An action with nothing for the mailbox is finished here, and one with
            # nothing for the platform keeps "planned" (meaning the same as
            # platform_done to a resumed run): a third of a first sync's action
            # updates were these moves.
            finishing = {w.action_id for w in work if not _writes(w.decision, "mailbox")}
            olds = cycle.get_links(s, [w.decision.link_id for w in work if w.action_id in finishing])
            for w in work:
                if escape is not None:
                    break
                outcome = self._collect(w, "platform", results)
                if outcome == "ok":
                    if w.action_id in finishing:
                        self._finalize(w, olds.get(w.decision.link_id))
                        continue
                    w.status = "platform_done"
                    if _writes(w.decision, "platform"):
                        self.fx.action(w.action_id, status="platform_done", result=w.result)
                elif isinstance(outcome, ConnectorError):
                    escape = escape or outcome
            self.fx.flush(s, self.info.connection_id, "reread")
        if escape is not None:
            raise escape

    # --------------------------------------------------------- mailbox side
    def _mailbox_phase(self, work: list[_Work], sender: ThreadPoolExecutor) -> Callable[[], None]:
        """Start the chunk's mailbox writes on `sender`'s thread; the function returned
        waits for them and records their outcome."""
        results = self._recover_creates([w for w in work if w.status == "mailbox_started"])
        creates, updates, deletes = [], [], []
        for w in work:
            for idx, wr in _writes(w.decision, "mailbox"):
                key = f"{w.key}:m{idx}"
                if key in results:
                    continue
                req = WriteRequest(key=key, content=wr.content, external_id=wr.external_id, etag=wr.etag,
                                   marker=f"concord:{key}", keep=tuple(wr.keep))
                {"create": creates, "update": updates, "delete": deletes}[wr.op].append(req)
        if creates:
            with self.sessions.begin() as s:
                for w in work:
                    if w.status != "mailbox_started" and any(wr.op == "create" for _, wr in _writes(w.decision, "mailbox")):
                        w.status = "mailbox_started"
                        self.fx.action(w.action_id, status="mailbox_started")
                self.fx.flush(s, self.info.connection_id, "reread")

        def send() -> ConnectorError | None:
            for call, requests in ((self.mailbox.create_many, creates), (self.mailbox.update_many, updates),
                                   (self.mailbox.delete_many, deletes)):
                if requests:
                    escape = self._send_paced(call, requests, results)
                    if escape is not None:
                        return escape
            return None

        if not (creates or updates or deletes):
            return lambda: self._mailbox_results(work, None, results)
        # the activity's context goes along: a rate-limit wait there still heartbeats
        sent = sender.submit(contextvars.copy_context().run, send)
        return lambda: self._mailbox_results(work, sent.result(), results)

    def _mailbox_results(self, work: list[_Work], escape: ConnectorError | None,
                         results: dict[str, WriteResult]) -> None:
        with self.sessions.begin() as s:
            olds = cycle.get_links(s, [w.decision.link_id for w in work])
            for w in work:
                needed = [f"{w.key}:m{idx}" for idx, _ in _writes(w.decision, "mailbox")]
                if any(k not in results for k in needed):
                    continue  # not sent: the escaping error stopped the run before it
                outcome = self._collect(w, "mailbox", results)
                if outcome == "ok":
                    self._finalize(w, olds.get(w.decision.link_id))
                elif isinstance(outcome, ConnectorError):
                    escape = escape or outcome
            self.fx.flush(s, self.info.connection_id, "reread")
        if escape is not None:
            raise escape

    def _recover_creates(self, resumed: list[_Work]) -> dict[str, WriteResult]:
        """Creates sent before a crash may exist already: find them by marker before sending again.

        One lookup for the whole chunk (a People listing is the whole mailbox), and what
        it finds is stored on the action at once, so a later attempt never looks again.
        """
        results: dict[str, WriteResult] = {}
        wanted: dict[str, _Work] = {}
        for w in resumed:
            found = w.result.get("found") or {}
            for idx, wr in _writes(w.decision, "mailbox"):
                key = f"{w.key}:m{idx}"
                if wr.op != "create":
                    continue
                if key in found:
                    results[key] = WriteResult(key=key, record=self.rules.record.model_validate(found[key]))
                else:
                    wanted[f"concord:{key}"] = w
        if not wanted:
            return results
        hits = self.pacer.idempotent(self.mailbox.find_by_markers, sorted(wanted),
                               heartbeat=lambda: self.heartbeat(self.done_items))
        if hits:
            with self.sessions.begin() as s:
                for marker, record in hits.items():
                    w = wanted[marker]
                    key = marker.removeprefix("concord:")
                    w.result.setdefault("found", {})[key] = record.model_dump(mode="json")
                    results[key] = WriteResult(key=key, record=record)
                for w in {id(w): w for w in wanted.values()}.values():
                    if w.result.get("found"):
                        self.fx.action(w.action_id, result=w.result)
                self.fx.flush(s, self.info.connection_id, "reread")
        return results

    def _send_paced(self, call: Callable, requests: list[WriteRequest],
                    results: dict[str, WriteResult]) -> ConnectorError | None:
        """Send, then send again what the provider refused with a rate limit (not
        processed, so safe even for creates) once its delay has passed. Results go into
        `results`; the error that stops the run (budget spent, outage) is returned."""
        todo = requests
        while todo:
            try:
                got = {r.key: r for r in call(todo)}
            except ConnectorError as exc:
                return exc
            results.update(got)
            limited = [r for r in todo if isinstance(got[r.key].error, RateLimited)]
            if not limited:
                return None
            slowest = max((got[r.key].error for r in limited), key=lambda e: e.retry_after or 0.0)
            try:
                self.mailbox_pacer.wait(slowest)
            except RateLimited as exc:
                return exc
            todo = limited
        return None

    # ------------------------------------------------------------ results
    def _collect(self, w: _Work, side: str, results: dict[str, WriteResult]) -> str | ConnectorError:
        """Fold one side's write results into the action: "ok", "rejected", "deferred", or
        the error (transient, rate limit, auth) that leaves it for the activity's retry."""
        prefix = "p" if side == "platform" else "m"
        for idx, wr in _writes(w.decision, side):
            res = results.get(f"{w.key}:{prefix}{idx}")
            if res is None:
                continue
            err = res.error
            if err is None:
                rec = res.record
                w.result[f"{side}"] = {
                    "id": rec.external_id if rec else wr.external_id,
                    "etag": rec.etag if rec else None,
                    "hash": self.rules.hash(rec.content) if rec and rec.content else None,
                    "op": wr.op,
                }
                continue
            if isinstance(err, ValidationRejected):
                w.status = "rejected"
                w.result["rejected_side"] = side
                w.result["rejected_field"] = err.field
                w.result["rejected_rule"] = err.rule
                self.fx.action(w.action_id, status="rejected", result=w.result,
                               error_code=err.code, error_message=err.message)
                self.summary.rejected += 1
                return "rejected"
            if isinstance(err, PreconditionFailed) and wr.op == "update" and side == "mailbox":
                current = self._reread_mailbox(wr.external_id)
                if current is not None and current.content == wr.content:
                    w.result[side] = {"id": current.external_id, "etag": current.etag,
                                      "hash": self.rules.hash(current.content), "op": wr.op}
                    continue  # our earlier attempt landed already
                self._defer(w, side, current, err)
                return "deferred"
            if isinstance(err, (PreconditionFailed, NotFound)):
                current = self._reread(side, wr.external_id) if wr.external_id else None
                if isinstance(err, NotFound) and wr.op == "delete":
                    continue
                self._defer(w, side, current, err)
                return "deferred"
            return err  # transient, rate limit, auth: the whole activity retries
        return "ok"

    def _reread_mailbox(self, external_id: str | None) -> SideRecord | None:
        if not external_id:
            return None
        try:
            return self.mailbox.get(external_id)
        except NotFound:
            return self.rules.record(side="mailbox", external_id=external_id, deleted=True)

    def _reread(self, side: str, external_id: str) -> SideRecord | None:
        if side == "mailbox":
            return self._reread_mailbox(external_id)
        records = self.platform.get_many(self.info.org_id, [external_id])
        return records[0] if records else self.rules.record(side="platform", external_id=external_id, deleted=True)

    def _defer(self, w: _Work, side: str, current: SideRecord | None, err: ConnectorError) -> None:
        """Stale etag / vanished target: stage what the side holds now, merge again next cycle."""
        if current is not None:
            self.fx.restage[side].append(current)
        self.fx.action(w.action_id, status="deferred", result=w.result,
                       error_code=err.code, error_message=type(err).__name__)
        self.summary.deferred += 1

    def _finalize(self, w: _Work, old) -> None:
        """Record what a completed action did; written by `_Effects.flush` with its chunk."""
        d = w.decision
        fx = self.fx
        audit = {"org_id": self.info.org_id, "connection_id": self.info.connection_id, "action_id": w.action_id,
                 "kind": self.kind,
                 "cycle_id": self.cycle_id}
        if d.unlink and old is not None:
            fx.unlink.append(int(old.id))
            self.summary.unlinked += 1
            fx.audits.append({**audit, "op": "unlink", "detail": {"link_id": int(old.id), "rule": d.rule}})
            if d.rule == "unlinked_on_delete":
                # The record that survives on the other side stays where it is, no longer
                # synced: its item says so, instead of the outcome it had while linked.
                survivor = ("platform", old.platform_id) if d.mailbox_id else ("mailbox", old.mailbox_id)
                fx.outcomes.append({"side": survivor[0], "external_id": survivor[1], "status": "skipped",
                                    "rule": "unlinked_on_delete"})
        for wr in d.writes:
            bucket = {"create": self.summary.created, "update": self.summary.updated, "delete": self.summary.deleted}[wr.op]
            bucket[wr.side] = bucket.get(wr.side, 0) + 1
            done = w.result.get(wr.side, {})
            fx.audits.append({**audit, "side": wr.side, "op": wr.op, "external_id": done.get("id") or wr.external_id,
                              "detail": {"rule": d.rule, "fields": d.fields}})
            if wr.side == "platform" and (done.get("id") or wr.external_id):
                fx.mirrored.append(self._mirror_entry(wr, done))
        if d.link and d.snapshot is not None:
            m_done, p_done = w.result.get("mailbox", {}), w.result.get("platform", {})
            snap_hash = self.rules.hash(d.snapshot)
            keep_id = None if (d.unlink or old is None) else int(old.id)
            spec = dict(
                org_id=self.info.org_id, connection_id=self.info.connection_id, kind=self.kind,
                mailbox_id=m_done.get("id") or d.mailbox_id or (old.mailbox_id if old is not None else None),
                platform_id=p_done.get("id") or d.platform_id or (old.platform_id if old is not None else None),
                snapshot=d.snapshot.model_dump(mode="json"),
                mailbox_hash=m_done.get("hash") or snap_hash,
                platform_hash=p_done.get("hash") or snap_hash,
                mailbox_etag=m_done.get("etag") or d.mailbox_etag,
                platform_etag=p_done.get("etag") or d.platform_etag,
                keys=sorted(self.rules.for_settings(self.settings).keys(d.snapshot)),
            )
            if keep_id is not None:
                spec["id"] = keep_id
            fx.links.append(spec)
            fx.link_owners.append((w.action_id, d.item_keys()))
            if keep_id is None:
                self.summary.linked += 1
                fx.link_audits.append({**audit, "op": "link", "detail": {"rule": d.rule, "score": d.score}})
            else:
                fx.link_audits.append(None)
        for side, ext in d.item_keys():
            fx.outcomes.append({"side": side, "external_id": ext, "status": "applied", "rule": d.rule})
        if d.renamed_from:
            fx.outcomes.append({"side": "mailbox", "external_id": d.renamed_from, "status": "applied",
                                "rule": "mailbox_id_changed"})
        if d.review_id is not None:
            fx.reviews.append((d.review_id, "applied"))
        fx.action(w.action_id, status="done", result=w.result)
        w.status = "done"
        self.summary.applied += 1

    def _mirror_entry(self, wr: Write, done: dict) -> mirror.MirrorEntry:
        """The platform record as this write left it, for the organisation's mirror."""
        gone = wr.op == "delete" or wr.content is None
        return mirror.MirrorEntry(
            external_id=done.get("id") or wr.external_id, hash=None if gone else (done.get("hash") or
                                                                                  self.rules.hash(wr.content)),
            etag=None, owner=(self.settings.owner or None) if wr.op == "create" else None, deleted=gone,
            keys=frozenset() if gone else frozenset(self.rules.for_settings(self.settings).keys(wr.content)),
            record={})

    # --------------------------------------------------------- rejections
    def handle_rejections(self, heartbeat: Callable = lambda *a: None) -> RejectionSummary:
        """Fix a refused record by a configured rule once; otherwise quarantine its items."""
        out = RejectionSummary()
        with self.sessions() as s:
            work = [_Work(r, self.rules)
                    for r in repo.actions_by_status(s, self.info.connection_id, ["rejected"], kind=self.kind)]
        retry: list[_Work] = []
        with self.sessions.begin() as s:
            for w in work:
                fixed = None if w.result.get("fixed_by") else self._fix(w)
                if fixed is not None:
                    w.decision, rules = fixed
                    w.result = {"fixed_by": rules}
                    w.status = "planned"
                    repo.update_action(s, w.action_id, status="planned", decision=w.decision.model_dump(mode="json"),
                                       result=w.result, error_code=None, error_message=None)
                    retry.append(w)
                    continue
                self._quarantine(s, w)
                out.quarantined += 1
        if retry:
            self.run(heartbeat)
            with self.sessions() as s:
                still = {int(r.id) for r in repo.actions_by_status(s, self.info.connection_id, ["rejected"],
                                                                   kind=self.kind)}
            out.fixed = sum(1 for w in retry if w.action_id not in still)
            with self.sessions.begin() as s:
                for w in retry:
                    if w.action_id in still:
                        row = repo.get_action(s, w.action_id)
                        w.result = dict(row.result or {})
                        self._quarantine(s, w, error_code=row.error_code, error_message=row.error_message)
                        out.quarantined += 1
        return out

    def _fix(self, w: _Work) -> tuple[Decision, list[str]] | None:
        if not self.settings.fix_rules or w.result.get("rejected_side") != "platform":
            return None
        d = w.decision
        field = w.result.get("rejected_field")
        writes = list(d.writes)
        applied: list[str] = []
        for i, wr in enumerate(writes):
            if wr.side == "platform" and wr.content is not None:
                got = self.rules.fix(wr.content, field, self.settings.fix_rules)
                if got is None:
                    return None
                fixed, applied = got
                writes[i] = wr.model_copy(update={"content": fixed})
                # Both ends must end equal: the mailbox gets the fixed value too.
                if d.mailbox_id and not any(x.side == "mailbox" for x in writes):
                    writes.append(Write(side="mailbox", op="update", external_id=d.mailbox_id,
                                        content=fixed, etag=d.mailbox_etag))
                d = d.model_copy(update={"writes": writes, "snapshot": fixed})
        return (d, applied) if applied else None

    def _quarantine(self, s, w: _Work, error_code: str | None = None, error_message: str | None = None) -> None:
        row = repo.get_action(s, w.action_id)
        code = error_code or row.error_code or "validation_rejected"
        rule = w.result.get("rejected_rule")
        field = w.result.get("rejected_field")
        message = error_message or row.error_message or code
        label = f"{code}:{rule}" if rule else code
        for side, ext in w.decision.item_keys():
            cycle.set_item_outcome_by_key(s, self.info.connection_id, side, ext, "quarantined", kind=self.kind,
                                         rule=rule or "platform_validation", error_code=label,
                                         error_message=f"{message}" + (f" (field: {field})" if field else ""))
        if w.decision.review_id is not None:
            repo.set_review_status(s, w.decision.review_id, "superseded")
        repo.update_action(s, w.action_id, status="failed")

