"""The mail kind's cycle steps: mail seen in a mailbox logged once on the platform.

Same activity names as every kind (`mail.fetch_mailbox`, `mail.plan`, ...), so the
mailbox workflow runs it like contacts; the steps differ because mail is logged,
not merged:

- fetch_mailbox  inherited: a delta round staged page by page, resumable, a forgotten
                 cursor answered by a listing bounded by the backfill window.
- fetch_platform lead conversions (the organisation's reader does it when running).
- plan           the platform is asked who the participants are (one call per lookup,
                 for the whole batch); the pure rules in `sync/mail/` decide what is
                 logged, skipped (by a named rule), removed, captured and associated.
                 Decisions are stored as actions; nothing with content crosses history.
- write          captures first, then the claims (a unique row per organisation and
                 Message-ID: the first mailbox logs, the others add their user), then one
                 batched log call. Every write is idempotent by key, so a retried
                 activity changes nothing twice.

Every staged message ends in a visible state: applied (logged, removed, associated),
skipped with its rule, quarantined with its code, or pending with `claim_in_flight`
while another mailbox's first write of the same message is under way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from activities.errors import to_application_error
from activities.pacing import Pacer
from activities.pipeline import (
    UNFINISHED_ACTIONS,
    ConnectionInfo,
    KindPipeline,
    _heartbeat,
    _staged,
    keep_alive,
)
from connectors.protocols import MailboxMail, PlatformMail, WriteRequest
from models.errors import ConnectorError, CursorExpired, ValidationRejected
from models.mail import MailFetchOptions, MailMessage
from models.mail_log import Association, Conversion, EmailLog, NewPerson, Person
from models.workflow import CycleRef, FetchResult, OrgReadResult, PlanSummary, RejectionSummary, WriteSummary
from store import cycle, mirror, repo
from store import mail as mail_store
from store import outbox as outbox_store
from sync.kinds.mail import MAIL
from sync.mail.associate import associate
from sync.mail.capture import capture
from sync.mail.policy import MailPolicy
from sync.mail.rules import classify
from sync.mail.threads import ThreadIdentity, message_key, thread_identity, weak_keys
from sync.mail.visibility import most_restrictive, to_log
from telemetry import activity_span

MailFactory = Callable[[ConnectionInfo, MailFetchOptions], MailboxMail]

#: lookups and writes go to the platform in chunks of this many
LOOKUP_CHUNK = 500
#: how long a mailbox waits for another's first write of a shared message before it
#: leaves its copy pending (`claim_in_flight`) for the next cycle
CLAIM_WAIT_S = 5.0
#: the organisation's conversions are read by a mailbox only when its reader is this stale
READER_SILENT_S = 900.0


@dataclass
class MailContext:
    info: ConnectionInfo
    policy: MailPolicy
    connected_at: float
    #: the connected user's own addresses (never a lead, never a participant to match)
    own: frozenset[str]
    #: other connected mailboxes of the organisation: address -> their visibility level
    colleagues: dict[str, str] = field(default_factory=dict)


def _chunks(seq: Sequence, n: int = LOOKUP_CHUNK):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _domain(email: str) -> str:
    return email.rpartition("@")[2].lower()


class MailPipeline(KindPipeline):
    def __init__(self, session_factory, platform: PlatformMail, mail_for: MailFactory, *, wait=None,
                 claim_wait_s: float = CLAIM_WAIT_S) -> None:
        self._mail_for = mail_for
        self.claim_wait_s = claim_wait_s
        super().__init__(session_factory, MAIL, platform, self._connector, wait=wait)  # type: ignore[arg-type]

    # -- context ---------------------------------------------------------------
    def _context(self, s, connection_id: str) -> MailContext:
        info, _ = self._connection(s, connection_id)
        conn = repo.get_connection(s, connection_id)
        org = repo.get_org(s, info.org_id)
        policy = MailPolicy.for_user((org.settings or {}).get("mail", {}), (info.settings or {}).get("mail", {}))
        own = {info.account_ref.lower()} if "@" in (info.account_ref or "") else set()
        own |= {str(a).lower() for a in (info.settings or {}).get("aliases", [])}
        colleagues = {}
        for other in repo.list_connections(s, org_id=info.org_id):
            if other.id != connection_id and "@" in (other.account_ref or "") and other.status != "disconnected":
                try:
                    level = MailPolicy.for_user((org.settings or {}).get("mail", {}),
                                                (other.settings or {}).get("mail", {})).visibility
                except ValueError:
                    continue  # their settings are refused where they apply; here they add nothing
                colleagues[other.account_ref.lower()] = level
        return MailContext(info, policy, float(conn.created_at), frozenset(own), colleagues)

    def _options(self, ctx: MailContext) -> MailFetchOptions:
        folders = tuple((ctx.info.settings or {}).get("mail", {}).get("folders", ("inbox", "sentitems")))
        return MailFetchOptions(bodies=ctx.policy.bodies, attachments=ctx.policy.attachments,
                                since=ctx.policy.window_start(ctx.connected_at, time.time()), folders=folders)

    def _connector(self, info: ConnectionInfo) -> MailboxMail:
        with self.sessions() as s:
            ctx = self._context(s, info.connection_id)
        return self._mail_for(info, self._options(ctx))

    # -- the platform side: lead conversions -------------------------------------
    def fetch_platform(self, ref: CycleRef) -> FetchResult:
        result = FetchResult(stream="mail:platform")
        with self.sessions() as s:
            info, _ = self._connection(s, ref.connection_id)
            feed = mirror.get_feed(s, info.org_id, self.kind)
        if feed is None or feed.updated_at < time.time() - READER_SILENT_S:
            with activity_span("mail.fetch_platform", connection_id=ref.connection_id) as span:
                moved, calls = self._read_conversions(info.org_id)
                span.set(conversions=moved, calls=calls)
            result.fetched, result.calls = moved, calls
        return result

    def read_platform(self, org_id: str) -> OrgReadResult:
        with activity_span("mail.read_platform", org_id=org_id) as span:
            moved, calls = self._read_conversions(org_id)
            span.set(changes=moved, calls=calls)
        with self.sessions() as s:
            conns = repo.list_connections(s, org_id=org_id)
            active = sum(1 for c in conns if c.status != "disconnected") if conns else None
        return OrgReadResult(changes=moved, pages=1, calls=calls, woken=[], active_mailboxes=active)

    def _read_conversions(self, org_id: str) -> tuple[int, int]:
        """Move a converted lead's logged mail to its contact (and account, opportunity).

        Moves are idempotent, so two readers racing on one page do no harm; the cursor
        moves by compare-and-set and the loser's advance is simply dropped.
        """
        with self.sessions.begin() as s:
            mirror.ensure_feed(s, org_id, self.kind)
            cursor = mirror.get_feed(s, org_id, self.kind).value
        calls = moved = 0
        try:
            while True:
                try:
                    conversions, nxt = self.platform.conversions_since(org_id, cursor)
                except CursorExpired:
                    conversions, nxt = self.platform.conversions_since(org_id, None)
                    cursor = None
                calls += 1
                for c in conversions:
                    c = c if isinstance(c, Conversion) else Conversion.model_validate(c)
                    to = [Association(object_type="contact", object_id=c.contact_id)]
                    if c.account_id:
                        to.append(Association(object_type="account", object_id=c.account_id))
                    if c.opportunity_id:
                        to.append(Association(object_type="opportunity", object_id=c.opportunity_id))
                    self.platform.move_emails(org_id, c.lead_id, to)
                    calls += 1
                    moved += 1
                with self.sessions.begin() as s:
                    if nxt == cursor or not conversions:
                        mirror.touch(s, org_id, self.kind)
                        return moved, calls
                    if mirror.advance(s, org_id, self.kind, cursor, nxt) is None:
                        return moved, calls  # another reader moved it first
                cursor = nxt
                _heartbeat(moved)
        except ConnectorError as exc:
            raise to_application_error(exc) from None

    # -- plan ------------------------------------------------------------------
    def plan(self, ref: CycleRef, approve_mass_delete: bool = False) -> PlanSummary:
        cid = ref.connection_id
        with activity_span("mail.plan", connection_id=cid) as span, keep_alive():
            with self.sessions() as s:
                ctx = self._context(s, cid)
                busy = cycle.items_with_unfinished_actions(s, cid, UNFINISHED_ACTIONS, kind=self.kind)
                rows = [r for r in repo.items_by_status(s, cid, ["pending", "deferred"], kind=self.kind)
                        if (r.side, r.external_id) not in busy and r.side == "mailbox"]
                records = {r.external_id: _staged(r, self.rules) for r in rows}
                seen = mail_store.sightings(s, cid, list(records))
                # messages the platform sent (two-way send), and replies to them: their record
                ids = {m for r in records.values() if r.content is not None
                       for m in (r.content.message_id, *r.content.references, *r.content.in_reply_to)}
                sent_from = {mid: Association(object_type=row.record_type, object_id=row.record_id)
                             for mid, row in outbox_store.by_message_ids(s, ctx.info.org_id, ids).items()
                             if row.record_type and row.record_id}
                answered = {row.mailbox_id: row for row in cycle.active_reviews(s, cid, kind=self.kind)
                            if row.kind == "association" and row.status == "resolved" and row.mailbox_id}
            try:
                lookups = self._lookups(ctx, [r.content for r in records.values() if r.content and not r.deleted])
            except ConnectorError as exc:
                raise to_application_error(exc) from None
            lookups["sent_from"] = sent_from
            planned, outcomes, sightings = [], [], []
            summary = PlanSummary()
            now = time.time()
            with self.sessions() as s:
                for ext, rec in records.items():
                    d = self._decide(s, ctx, ext, rec, seen.get(ext), answered.get(ext), lookups, now)
                    summary.rules[d["rule"]] = summary.rules.get(d["rule"], 0) + 1
                    summary.outcomes[d["outcome"]] = summary.outcomes.get(d["outcome"], 0) + 1
                    if d["outcome"] == "apply":
                        planned.append({"item_mailbox_id": ext, "decision": d,
                                        "idempotency_key": f"{cid}:mail:{ref.cycle_id}:{ext}"})
                        continue
                    outcomes.append({"side": "mailbox", "external_id": ext, "status": d["status"], "rule": d["rule"],
                                     "error_code": d.get("error_code"), "error_message": d.get("error_message")})
                    if d.get("message_key") and d["status"] == "skipped" and not (seen.get(ext) or ("", "", ""))[1] == "logged":
                        sightings.append({"mailbox_id": ext, "message_key": d["message_key"], "state": "skipped",
                                          "rule": d["rule"]})
            summary.planned = len(records)
            with self.sessions.begin() as s:
                cycle.set_item_outcomes_by_key(s, cid, outcomes, kind=self.kind)
                mail_store.record_sightings(s, ctx.info.org_id, cid, sightings)
                if planned:
                    repo.add_actions(s, cid, ref.cycle_id, planned, kind=self.kind)
            span.set(planned=summary.planned, **{f"outcome.{k}": v for k, v in summary.outcomes.items()})
        return summary

    def _lookups(self, ctx: MailContext, messages: list[MailMessage]) -> dict[str, Any]:
        """Who the participants are on the platform: one call per lookup for the batch."""
        org = ctx.info.org_id
        emails = sorted({a.email for m in messages for a in m.participants() if a.email not in ctx.own})
        people: dict[str, list[Person]] = {}
        for chunk in _chunks(emails):
            for email, found in self.platform.people_by_email(org, chunk).items():
                people[email.lower()] = [p if isinstance(p, Person) else Person.model_validate(p) for p in found]
        free = set(ctx.policy.free_mail_domains)
        own_domains = set(ctx.policy.own_domains)
        domains = sorted({_domain(e) for e in emails if e not in people} - free - own_domains)
        accounts: dict[str, list] = {}
        for chunk in _chunks(domains):
            accounts.update(self.platform.accounts_by_domain(org, chunk))
        contact_ids = sorted({p.id for ps in people.values() for p in ps if p.kind == "contact"})
        opportunities: dict[str, list] = {}
        for chunk in _chunks(contact_ids):
            opportunities.update(self.platform.open_opportunities(org, chunk))
        return {"people": people, "accounts": accounts, "opportunities": opportunities}

    def _decide(self, s, ctx: MailContext, ext: str, rec, sighting, answered, lookups: dict, now: float) -> dict:
        """One message's fate, as a stored decision (plain JSON; the store's, never history's)."""
        policy = ctx.policy
        logged = sighting is not None and sighting[1] == "logged"
        key = sighting[0] if sighting else None
        if rec.problems:
            return {"outcome": "quarantine", "status": "quarantined", "rule": "malformed_input",
                    "error_code": "malformed_input", "error_message": "; ".join(rec.problems)}
        if rec.deleted or (rec.content is not None and "TRASH" in rec.content.labels):
            if logged and policy.on_delete == "remove":
                return {"outcome": "apply", "op": "remove", "rule": "deleted_log_removed", "message_key": key}
            return {"outcome": "skip", "status": "skipped",
                    "rule": "deleted_log_kept" if logged else "deleted_before_logging", "message_key": key}
        msg: MailMessage = rec.content
        if "unparseable" in msg.problems:
            return {"outcome": "quarantine", "status": "quarantined", "rule": "malformed_mime",
                    "error_code": "malformed_mime", "error_message": ", ".join(msg.problems)}
        key = message_key(msg)
        people = lookups["people"]
        label_removed = logged and policy.capture == "label" and policy.label not in msg.labels
        verdict = classify(msg, policy, known=set(people), now=now, connected_at=ctx.connected_at,
                           previously_logged=logged, label_removed=label_removed)
        if logged:
            if answered is not None:
                choice = (answered.resolution or {}).get("choice")
                if choice == "attach":
                    options = [Association.model_validate(o) for o in (answered.detail or {}).get("options", [])]
                    return {"outcome": "apply", "op": "associate", "rule": "association_answered", "message_key": key,
                            "associations": [o.model_dump() for o in options], "review_id": int(answered.id)}
                return {"outcome": "skip", "status": "skipped", "rule": "association_declined", "message_key": key,
                        "review_id": int(answered.id)}
            if label_removed and policy.on_label_removed == "remove":
                return {"outcome": "apply", "op": "remove", "rule": "label_removed", "message_key": key}
            return {"outcome": "skip", "status": "skipped", "rule": "already_logged", "message_key": key}
        captured = capture(msg, policy, known=set(people), own_user_emails=set(ctx.own), owner=ctx.info.user_id)
        if key in lookups["sent_from"]:
            # written on the platform and sent through this mailbox: logged on its record
            # whatever the capture rules say (it is the platform's own message)
            verdict = verdict.model_copy(update={"log": True, "rule": "logged_sent_from_platform", "action": "log"})
        if not verdict.log and verdict.rule == "no_known_participant" and captured:
            # mail to people the platform does not know yet, which the capture rules make
            # known: logged on the leads (or contacts) created for them
            verdict = verdict.model_copy(update={"log": True, "rule": "logged_captured", "action": "log"})
        if not verdict.log:
            return {"outcome": "skip", "status": "skipped", "rule": verdict.rule, "message_key": key}
        thread = thread_identity(msg, policy.own_domains)
        keys = weak_keys(msg, policy.own_domains)
        if thread.weak:
            # a reply without references: it joins a thread logged under the same subject
            # and participants in its time bucket or the neighbouring one (a weaker match,
            # flagged on the activity)
            found_key = mail_store.existing_thread(s, ctx.info.org_id, keys)
            thread = ThreadIdentity(key=found_key or thread.key, weak=True)
        found = associate(msg, people=people, accounts=lookups["accounts"], opportunities=lookups["opportunities"],
                          policy=policy, own_emails=set(ctx.own))
        # the record a platform-sent message was written on, for it and for the replies to it
        records = tuple(dict.fromkeys(lookups["sent_from"][m] for m in (key, *msg.references, *msg.in_reply_to)
                                      if m in lookups["sent_from"]))
        if records:
            found = found.model_copy(update={"chosen": tuple(dict.fromkeys(records + found.chosen))})
        # the product team's own objects (a project, a ticket), through the adapter's hook
        on_message = [p for a in msg.participants() for p in people.get(a.email, ())]
        custom = tuple(Association.model_validate(c) if not isinstance(c, Association) else c
                       for c in self.platform.custom_associations(ctx.info.org_id, msg, on_message))
        if custom:
            found = found.model_copy(update={"chosen": tuple(dict.fromkeys(found.chosen + custom))})
        # Connected colleagues on the message will contribute their copy: the most
        # restrictive of their levels applies from the first write, not once they sync.
        level = most_restrictive(policy.visibility, *(ctx.colleagues[a.email] for a in msg.participants()
                                                        if a.email in ctx.colleagues))
        log = to_log(msg, key=key, thread=thread, level=level, users=(ctx.info.user_id,),
                     associations=found.chosen, attachments_enabled=policy.attachments)
        return {"outcome": "apply", "op": "log", "rule": verdict.rule, "message_key": key, "weak_key": keys[0],
                "log": log.model_dump(mode="json"),
                "captures": [p.model_dump(mode="json") for p in captured],
                "ambiguities": [a.model_dump(mode="json") for a in found.ambiguities]}

    # -- write -----------------------------------------------------------------
    def write(self, ref: CycleRef) -> WriteSummary:
        cid = ref.connection_id
        with activity_span("mail.write", connection_id=cid) as span:
            with self.sessions() as s:
                ctx = self._context(s, cid)
                actions = repo.actions_by_status(s, cid, ["planned"], cycle_id=ref.cycle_id, kind=self.kind)
            summary = WriteSummary()
            calls_before = getattr(self.platform, "calls_made", 0)
            try:
                for chunk in _chunks(actions, 200):
                    self._write_chunk(ctx, list(chunk), summary)
                    _heartbeat(summary.applied)
            except ConnectorError as exc:
                raise to_application_error(exc) from None
            summary.calls["platform"] = getattr(self.platform, "calls_made", 0) - calls_before
            span.set(applied=summary.applied, rejected=summary.rejected, deferred=summary.deferred)
        return summary

    def _write_chunk(self, ctx: MailContext, actions: list, summary: WriteSummary) -> None:
        org, cid = ctx.info.org_id, ctx.info.connection_id
        done: dict[int, dict] = {}  # action id -> item outcome
        logs = [a for a in actions if a.decision["op"] == "log"]
        captured, capture_errors = self._capture(ctx, logs)
        to_log: list[tuple[Any, EmailLog, bool]] = []  # (action, log, first)
        waiting: list[Any] = []
        with self.sessions.begin() as s:
            for a in logs:
                d = a.decision
                if a.id in capture_errors:
                    done[a.id] = {"status": "quarantined", "rule": "capture_rejected", "error_code": capture_errors[a.id]}
                    continue
                log = EmailLog.model_validate(d["log"])
                extra = tuple(Association(object_type=p.kind, object_id=pid) for p, pid in captured.get(a.id, []))
                log = log.model_copy(update={"associations": tuple(dict.fromkeys(log.associations + extra))})
                c = mail_store.claim(s, org, log.key, thread_key=log.thread_key, weak_thread=log.weak_thread,
                                     connection_id=cid, visibility=log.visibility, weak_key=d.get("weak_key"))
                if c.held_by(cid):
                    to_log.append((a, log, True))
                elif c.activity_id:
                    to_log.append((a, self._participant(log), False))
                else:
                    waiting.append((a, log))
        if waiting:
            to_log += self._await_claims(org, waiting, done)
        results = []
        for chunk in _chunks(to_log, 100):
            results += list(zip(chunk, self.platform.log_emails(org, [log for _, log, _ in chunk])))
        sightings, reviews = [], []
        with self.sessions.begin() as s:
            for (a, log, first), res in zip([r[0] for r in results], [r[1] for r in results]):
                if res.error is not None:
                    if first:
                        mail_store.release(s, org, log.key, cid)
                    code = self._error_code(res.error)
                    done[a.id] = {"status": "quarantined", "rule": "log_rejected", "error_code": code}
                    continue
                activity_id = res.record.external_id if res.record else None
                visibility = (res.record.etag if res.record and res.record.etag else log.visibility)
                if first and activity_id:
                    mail_store.set_logged(s, org, log.key, activity_id=activity_id, visibility=visibility)
                    summary.created["platform"] = summary.created.get("platform", 0) + 1
                else:
                    summary.updated["platform"] = summary.updated.get("platform", 0) + 1
                sightings.append({"mailbox_id": a.item_mailbox_id, "message_key": log.key, "state": "logged",
                                  "rule": a.decision["rule"]})
                review_id = None
                for amb in a.decision.get("ambiguities", []):
                    review_id = repo.open_review(s, connection_id=cid, kind="association", mailbox_id=a.item_mailbox_id,
                                                 platform_id=activity_id, detail={"rule": amb.get("reason"), **amb},
                                                 item_kind=self.kind)
                done[a.id] = {"status": "applied", "rule": a.decision["rule"] if first else "added_participant",
                              "review_id": review_id}
            for a in actions:
                if a.decision["op"] in ("remove", "associate"):
                    done[a.id] = self._remove_or_associate(s, ctx, a, sightings)
            self._finish(s, ctx, actions, done, summary)
            mail_store.record_sightings(s, org, cid, sightings)

    def _capture(self, ctx: MailContext, logs: list) -> tuple[dict[int, list], dict[int, str]]:
        """Create the leads or contacts the rules captured, once per address in the
        organisation (the key), fixing a missing company from the domain once."""
        org = ctx.info.org_id
        wanted: dict[str, NewPerson] = {}
        for a in logs:
            for p in a.decision.get("captures", []):
                person = NewPerson.model_validate(p)
                wanted.setdefault(person.email, person)
        ids: dict[str, str] = {}
        errors: dict[str, str] = {}
        pending = dict(wanted)
        for attempt in range(2):
            if not pending:
                break
            reqs = [WriteRequest(key=f"{org}:person:{email}", content=p, owner=p.owner) for email, p in pending.items()]
            retry: dict[str, NewPerson] = {}
            for req, res in zip(reqs, self.platform.create_people(org, reqs)):
                email = req.content.email
                if res.error is None and res.record is not None:
                    ids[email] = res.record.external_id
                elif isinstance(res.error, ValidationRejected) and res.error.field and "company" in res.error.field \
                        and attempt == 0 and not req.content.company:
                    retry[email] = req.content.model_copy(update={"company": _company_fallback(email)})
                else:
                    errors[email] = self._error_code(res.error)
            pending = retry
        by_action: dict[int, list] = {}
        failed: dict[int, str] = {}
        for a in logs:
            for p in a.decision.get("captures", []):
                person = NewPerson.model_validate(p)
                if person.email in ids:
                    by_action.setdefault(a.id, []).append((person, ids[person.email]))
                elif person.email in errors:
                    failed[a.id] = f"capture:{errors[person.email]}"
        return by_action, failed

    @staticmethod
    def _participant(log: EmailLog) -> EmailLog:
        """What a further mailbox adds to a message another logged: its user, its
        associations and its visibility (the platform keeps the most restrictive)."""
        return EmailLog(key=log.key, thread_key=log.thread_key, weak_thread=log.weak_thread, visibility=log.visibility,
                        users=log.users, associations=log.associations)

    def _await_claims(self, org: str, waiting: list, done: dict) -> list:
        """Another mailbox holds the claim and has not finished its first write yet."""
        deadline = time.monotonic() + self.claim_wait_s
        out = []
        while waiting:
            with self.sessions() as s:
                held = mail_store.claims(s, org, [log.key for _, log in waiting])
            still = []
            for a, log in waiting:
                c = held.get(log.key)
                if c is not None and c.activity_id:
                    out.append((a, self._participant(log), False))
                else:
                    still.append((a, log))
            waiting = still
            if not waiting or time.monotonic() > deadline:
                break
            _heartbeat()
            time.sleep(0.2)
        for a, _ in waiting:
            done[a.id] = {"status": "pending", "rule": "claim_in_flight"}
        return out

    def _remove_or_associate(self, s, ctx: MailContext, a, sightings: list) -> dict:
        org, cid = ctx.info.org_id, ctx.info.connection_id
        d = a.decision
        key = d["message_key"]
        if d["op"] == "associate":
            c = mail_store.get_claim(s, org, key)
            log = EmailLog(key=key, thread_key=c.thread_key if c else key, visibility=(c.visibility if c else "private"),
                           associations=tuple(Association.model_validate(x) for x in d["associations"]))
            res = self.platform.log_emails(org, [log])[0]
            if res.error is not None:
                return {"status": "quarantined", "rule": "log_rejected", "error_code": self._error_code(res.error)}
            if d.get("review_id"):
                repo.set_review_status(s, int(d["review_id"]), "applied")
            return {"status": "applied", "rule": d["rule"]}
        sightings.append({"mailbox_id": a.item_mailbox_id, "message_key": key, "state": "removed", "rule": d["rule"]})
        if mail_store.logged_elsewhere(s, org, key, cid) == 0:
            res = self.platform.remove_emails(org, [key])[0]
            if res.error is not None:
                return {"status": "quarantined", "rule": "remove_rejected", "error_code": self._error_code(res.error)}
            mail_store.set_removed(s, org, key)
        return {"status": "applied", "rule": d["rule"]}

    def _finish(self, s, ctx: MailContext, actions: list, done: dict, summary: WriteSummary) -> None:
        outcomes, updates = [], []
        for a in actions:
            o = done.get(a.id)
            if o is None:
                continue
            status = o["status"]
            outcomes.append({"side": "mailbox", "external_id": a.item_mailbox_id, "status": status, "rule": o["rule"],
                             "error_code": o.get("error_code"), "review_id": o.get("review_id")})
            action_status = {"applied": "done", "quarantined": "failed", "pending": "deferred"}[status]
            updates.append({"id": a.id, "status": action_status, "error_code": o.get("error_code")})
            if status == "applied":
                summary.applied += 1
            elif status == "quarantined":
                summary.rejected += 1
            else:
                summary.deferred += 1
        cycle.set_item_outcomes_by_key(s, ctx.info.connection_id, outcomes, kind=self.kind)
        cycle.update_actions(s, updates)

    @staticmethod
    def _error_code(err: ConnectorError | None) -> str:
        if isinstance(err, ValidationRejected):
            return f"validation:{err.field or 'record'}"
        return getattr(err, "code", "error")

    def handle_rejections(self, ref: CycleRef) -> RejectionSummary:
        """Rejections are settled inside write (a fix rule for a capture, then quarantine);
        this step reports what this cycle's writes quarantined, for the cycle's counts."""
        with self.sessions() as s:
            failed = repo.actions_by_status(s, ref.connection_id, ["failed"], cycle_id=ref.cycle_id, kind=self.kind)
        return RejectionSummary(quarantined=len(failed))


def _company_fallback(email: str) -> str:
    """A lead's company when the platform requires one and the domain gives none."""
    from sync.mail.capture import company_from_domain
    from sync.mail.policy import FREE_MAIL

    return company_from_domain(_domain(email), FREE_MAIL) or "Individual"
