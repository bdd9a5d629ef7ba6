"""The calendar kind's pipeline: the shared one, plus what makes a meeting one record.

Events sync through the generic planner and executor like contacts (fetch, plan with
field-level merges, write, fix or quarantine). Three things are the calendar's own:

- **Roles.** Each connected calendar sees the rules from its owner's seat
  (`sync.calendar.roles`): the organizer's copy is merged both ways; an attendee's
  copy adds only its owner's answer and is never written to.
- **Claims.** Before a mailbox's event is created on the platform, its
  (UID, RECURRENCE-ID) is claimed for the organisation (store/calendar.py). The
  claimer creates; a calendar that loses the race waits for the claimer's record and
  links its copy to it, writing only what its role allows (its answer, or the
  organizer's content). Two workers syncing the same meeting at the same moment make
  one record.
- **The horizon.** A platform that holds single events only gets each series expanded
  over a horizon; the organisation's periodic read rolls it forward.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

from activities.executor import PLATFORM_WRITTEN, Executor, _Work, _writes
from activities.pipeline import ConnectionInfo, KindPipeline, _Batch
from models.errors import ConnectorError
from models.event import Event
from models.plan import Decision, Write
from models.workflow import OrgReadResult
from store import calendar as claims
from sync.calendar.recurrence import RecurrenceError, split_this_and_future
from sync.calendar.roles import CalendarRulesFor, attendee_merge, is_attendee_copy, restrict_attendee_writes
from sync.kinds import KindRules
from sync.merge import three_way_merge

log = logging.getLogger(__name__)

#: how long a calendar that lost a claim waits for the claimer's platform record before
#: leaving its copy for the next cycle (the claimer writes in the same seconds)
CLAIM_WAIT_S = 15.0
CLAIM_POLL_S = 0.2
#: what a "this and following" edit carries into the new series
SPLIT_FIELDS: tuple[str, ...] = ("title", "description", "location", "status", "transparency", "visibility",
                                 "start", "end", "start_tz", "end_tz", "project", "attendees", "responses")
#: how far ahead a single-events platform holds a series' instances
HORIZON_DAYS = 90
#: the horizon is rolled forward once it is this much shorter than HORIZON_DAYS
HORIZON_SLACK_DAYS = 1


def connected_address(info: ConnectionInfo) -> str:
    """The connected user's address: the organizer of what this calendar creates."""
    ref = info.account_ref or ""
    if "@" in ref:
        return ref.casefold()
    return str((info.settings or {}).get("email") or "").casefold()


class CalendarExecutor(Executor):
    """The shared executor, claiming each meeting before creating it on the platform."""

    def _platform_phase(self, work: list[_Work]) -> None:
        own, lost = self._claim(work)
        adopted = self._adopt(lost)
        try:
            super()._platform_phase(own + adopted)
        finally:
            self._record_claims(own)
            self._forget_deleted(own + adopted)

    def _forget_deleted(self, work: list[_Work]) -> None:
        """A meeting deleted from the platform may come back (a calendar still holds it):
        its claim goes with its record, or the next copy would wait on a record that is gone."""
        gone = [wr.external_id for w in work if w.status in PLATFORM_WRITTEN
                for _, wr in _writes(w.decision, "platform") if wr.op == "delete" and wr.external_id]
        if gone:
            with self.sessions.begin() as s:
                claims.forget_platform_ids(s, self.info.org_id, gone)

    def _fix(self, w: _Work):
        """A named fix, as for any kind; a fixed meeting is still never written into an
        attendee's copy (the fix would add such a write so both ends end equal)."""
        got = super()._fix(w)
        if got is None:
            return None
        d, applied = got
        return restrict_attendee_writes(d, connected_address(self.info), None), applied

    def _quarantine(self, s, w: _Work, error_code: str | None = None, error_message: str | None = None) -> None:
        """Quarantine, and give up the meeting claims this write held, so the same meeting
        on another calendar may still bring it to the platform instead of waiting on it."""
        super()._quarantine(s, w, error_code=error_code, error_message=error_message)
        for idx, wr in self._creates(w):
            claims.release(s, self.info.org_id, wr.content.uid, wr.content.recurrence_id, f"{w.key}:p{idx}")

    @staticmethod
    def _creates(w: _Work) -> list[tuple[int, Write]]:
        return [(i, wr) for i, wr in _writes(w.decision, "platform")
                if wr.op == "create" and isinstance(wr.content, Event) and wr.content.uid]

    def _claim(self, work: list[_Work]) -> tuple[list[_Work], list[_Work]]:
        own, lost = [], []
        with self.sessions.begin() as s:
            for w in work:
                mine = True
                for idx, wr in self._creates(w):
                    c = claims.claim(s, self.info.org_id, wr.content.uid, wr.content.recurrence_id,
                                     connection_id=self.info.connection_id, claim_key=f"{w.key}:p{idx}")
                    mine = mine and c.claim_key == f"{w.key}:p{idx}"
                (own if mine else lost).append(w)
        return own, lost

    def _record_claims(self, own: list[_Work]) -> None:
        with self.sessions.begin() as s:
            for w in own:
                done = w.result.get("platform") or {}
                if w.status in PLATFORM_WRITTEN and done.get("id"):
                    for _, wr in self._creates(w):
                        claims.set_platform_id(s, self.info.org_id, wr.content.uid, wr.content.recurrence_id,
                                               done["id"])

    def _adopt(self, lost: list[_Work]) -> list[_Work]:
        """Turn a lost claim's create into a link to the claimer's record, writing only
        what this copy's role adds; copies whose claimer has not finished in time are
        left for the next cycle, re-staged (nothing is lost, nothing created twice)."""
        if not lost:
            return []
        keys = {(wr.content.uid, wr.content.recurrence_id) for w in lost for _, wr in self._creates(w)}
        deadline = time.monotonic() + CLAIM_WAIT_S
        while True:
            with self.sessions() as s:
                held = claims.claims_for(s, self.info.org_id, keys)
            if all(held.get(k) and held[k].platform_id for k in keys) or time.monotonic() >= deadline:
                break
            self.heartbeat(self.done_items)
            time.sleep(CLAIM_POLL_S)
        ready, waiting = [], []
        for w in lost:
            ids = [held.get((wr.content.uid, wr.content.recurrence_id)) for _, wr in self._creates(w)]
            (ready if all(c is not None and c.platform_id for c in ids) else waiting).append(w)
        if waiting:
            with self.sessions.begin() as s:
                for w in waiting:
                    wr = self._creates(w)[0][1]
                    self.fx.restage["mailbox"].append(self.rules.record(
                        side="mailbox", external_id=w.decision.mailbox_id or "", content=wr.content))
                    self.fx.action(w.action_id, status="deferred", result=w.result, error_code="meeting_claim_pending",
                                   error_message="another calendar is creating this meeting")
                    self.summary.deferred += 1
                self.fx.flush(s, self.info.connection_id, "reread")
        ids = sorted({c.platform_id for c in held.values() if c.platform_id})
        current = {r.external_id: r for r in self.platform.get_many(self.info.org_id, ids)} if ids else {}
        out = []
        me = connected_address(self.info)
        for w in ready:
            writes, update = [], {}
            for wr in w.decision.writes:
                if not (wr.side == "platform" and wr.op == "create" and isinstance(wr.content, Event) and wr.content.uid):
                    writes.append(wr)
                    continue
                pid = held[(wr.content.uid, wr.content.recurrence_id)].platform_id
                rec = current.get(pid)
                if rec is None or rec.deleted or rec.content is None:
                    writes.append(wr)  # the claimer's record is gone again: create ours
                    continue
                merged = adopt(wr.content, rec.content, me)
                update.update(snapshot=merged, platform_id=pid, rule="same_meeting_as_claimed")
                if merged != rec.content:
                    writes.append(Write[Event](side="platform", op="update", external_id=pid, content=merged,
                                               etag=rec.etag))
            w.decision = w.decision.model_copy(update={"writes": writes, **update})
            out.append(w)
        return out


def adopt(mine: Event, theirs: Event, me: str) -> Event:
    """The platform record once a second calendar's copy of a meeting joins it.

    An attendee adds their answer. The organizer's copy is the meeting: its content wins
    over what an attendee's copy created, keeping what only the platform holds (the
    project) and everyone's answers.
    """
    if is_attendee_copy(mine, me):
        return attendee_merge(None, mine, theirs, me)
    merged = three_way_merge(None, mine, theirs, "mailbox_wins").merged
    # an answer either copy has seen beats "needsAction" (Event keeps one per person)
    return Event.model_validate({**merged.model_dump(), "responses": theirs.responses + mine.responses,
                                 "project": mine.project or theirs.project})


class CalendarPipeline(KindPipeline):
    executor_class = CalendarExecutor

    def _rules_for(self, info: ConnectionInfo) -> KindRules:
        return calendar_rules_for(self.rules, connected_address(info))

    def _adjust(self, decisions: list[Decision], b: _Batch) -> list[Decision]:
        me = connected_address(b.info)
        out = []
        for d in decisions:
            rec = b.mailbox.get(d.mailbox_id or "")
            d = restrict_attendee_writes(d, me, rec.content if rec is not None else None)
            p = b.platform.get(d.platform_id or "")
            if (d.outcome == "apply" and p is not None and not p.deleted and p.content is not None
                    and p.content.range.upper() == "THISANDFUTURE" and not d.mailbox_id):
                d = self._split(b.info.org_id, p) or d
            out.append(d)
        return out

    def _split(self, org_id: str, exception) -> Decision | None:
        """A "this and following" edit made on the platform, as the providers make it:
        the series ends before the instance and a new series (a derived UID) carries
        the edit on. Neither Google nor Microsoft holds a THISANDFUTURE exception, so the
        platform is rewritten to the same shape first; the next cycles bring the shorter
        series and the new one to every calendar as ordinary records."""
        get_master = getattr(self.platform, "series_master", None)
        ex: Event = exception.content
        master = get_master(org_id, ex.uid) if get_master is not None else None
        if master is None or master.content is None or not master.content.is_series:
            return None  # nothing to split against: the exception is synced as it is
        changes = {f: getattr(ex, f) for f in SPLIT_FIELDS}
        try:
            truncated, new_series = split_this_and_future(master.content, ex.recurrence_id, changes)
        except RecurrenceError:
            return None
        writes: list[Write] = []
        if ex.status == "cancelled":  # "cancel this and following": the series just ends
            if truncated is not None:
                writes.append(Write[Event](side="platform", op="update", external_id=master.external_id,
                                           content=truncated, etag=master.etag))
            else:
                writes.append(Write[Event](side="platform", op="delete", external_id=master.external_id,
                                           etag=master.etag))
        elif truncated is None:  # split at the first instance: the whole series is edited
            writes.append(Write[Event](side="platform", op="update", external_id=master.external_id,
                                       content=new_series, etag=master.etag))
        else:
            writes += [Write[Event](side="platform", op="update", external_id=master.external_id,
                                    content=truncated, etag=master.etag),
                       Write[Event](side="platform", op="create", content=new_series)]
        writes.append(Write[Event](side="platform", op="delete", external_id=exception.external_id,
                                   etag=exception.etag))
        return Decision[Event](outcome="apply", rule="this_and_future_split", platform_id=exception.external_id,
                               writes=writes)

    def read_platform(self, org_id: str) -> OrgReadResult:
        """The organisation's periodic read; first rolls a single-events platform's
        horizon forward, so series keep their instances HORIZON_DAYS ahead."""
        roll = getattr(self.platform, "extend_horizon", None)
        if roll is not None:
            until = datetime.now(timezone.utc) + timedelta(days=HORIZON_DAYS)
            try:
                roll(org_id, until)
            except ConnectorError as exc:
                # the feed is still read; the next periodic read rolls again
                log.warning("calendar horizon not rolled for an organisation: %s", exc.code)
        return super().read_platform(org_id)


def calendar_rules_for(rules: KindRules, me: str) -> KindRules:
    """`rules` from the seat of the calendar owned by `me`."""
    return CalendarRulesFor(**{f: getattr(rules, f) for f in rules.__dataclass_fields__}, me=me)
