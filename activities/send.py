"""Two-way send: a platform's outbox items go out through their user's own mailbox,
exactly once, and are logged on the record they were written on.

A kind like the others (`send.fetch_platform`, `send.plan`, `send.write`, ...), so the
mailbox workflow runs it in its cycle and the organisation's workflow reads the outbox
feed (`send.read_platform`) and wakes the sender's mailbox.

Exactly once: the Message-ID is chosen and stored before the first attempt; the attempt
count is raised (with a short lease) before each call to the provider. An attempt that
finds earlier attempts looks for that Message-ID in the mailbox's Sent items first: a
crash after the provider accepted the message, or an error the provider returned after
sending, is then recorded as sent instead of sending twice. A permanent refusal
(invalid recipient, too large) fails the item with its reason, never retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from activities.errors import to_application_error
from activities.pacing import _sleep_heartbeating
from activities.pipeline import ConnectionInfo, _heartbeat, as_activity
from connectors.protocols import MailboxSend, PlatformMail, PlatformOutbox
from models.errors import ConnectorError, CursorExpired, Fatal, SendRejected, ValidationRejected
from models.mail import Address
from models.mail_log import Association, EmailLog, Person
from models.send import OutgoingMessage, SentRef
from models.workflow import CycleRef, FetchResult, OrgReadResult, PlanSummary, RejectionSummary, StoreSummary, WriteSummary
from store import mail as mail_store
from store import mirror, repo
from store import outbox as outbox_store
from sync.mail.associate import associate
from sync.mail.compose import compose, new_message_id
from sync.mail.content import parse_raw
from sync.mail.policy import MailPolicy
from sync.mail.threads import message_key, thread_identity, weak_keys
from sync.mail.visibility import to_log
from telemetry import activity_span

KIND = "send"
SendFactory = Callable[[ConnectionInfo], MailboxSend]

#: an attempt's claim on an item, longer than a provider call can last (the connectors
#: time out after 30 s): a later attempt waits it out before it looks in Sent, so it never
#: looks while a lost attempt's call may still land
LEASE_S = 45.0
#: the outbox feed is read by a mailbox only when the organisation's reader is this stale
READER_SILENT_S = 900.0
#: why an item waits, by the connection's status
HOLD_REASONS = {"needs_reauth": "mailbox_needs_reauth", "paused": "mailbox_paused",
                "disconnected": "mailbox_disconnected"}


@dataclass
class _Sender:
    info: ConnectionInfo
    address: Address
    policy: MailPolicy
    status: str = "active"


class SendPipeline:
    kind = KIND

    def __init__(self, sessions, outbox: PlatformOutbox, platform: PlatformMail, send_for: SendFactory, *,
                 lease_s: float = LEASE_S) -> None:
        self.sessions = sessions
        self.outbox = outbox
        self.platform = platform
        self.send_for = send_for
        self.lease_s = lease_s

    # -- context ---------------------------------------------------------------
    def _sender(self, s, connection_id: str) -> _Sender:
        conn = repo.get_connection(s, connection_id)
        if conn is None:
            raise to_application_error(Fatal(f"unknown connection {connection_id}"))
        org = repo.get_org(s, conn.org_id)
        settings = dict(conn.settings or {})
        info = ConnectionInfo(conn.id, conn.org_id, conn.user_id, conn.provider, conn.account_ref, settings)
        alias = settings.get("send_as") or {}
        address = Address(email=alias.get("email") or conn.account_ref, name=alias.get("name") or
                          settings.get("display_name", ""))
        try:
            policy = MailPolicy.for_user((org.settings or {}).get("mail", {}), settings.get("mail", {}))
        except ValueError:
            policy = MailPolicy()
        return _Sender(info, address, policy, conn.status)

    # -- the organisation's read of the outbox ----------------------------------
    def read_platform(self, org_id: str) -> OrgReadResult:
        with activity_span("send.read_platform", org_id=org_id) as span:
            changes, calls, woken = self._read_outbox(org_id)
            span.set(changes=changes, calls=calls, woken=len(woken))
        with self.sessions() as s:
            conns = repo.list_connections(s, org_id=org_id)
            active = sum(1 for c in conns if c.status != "disconnected") if conns else None
        return OrgReadResult(changes=changes, pages=1, calls=calls, woken=sorted(woken), active_mailboxes=active)

    def _read_outbox(self, org_id: str) -> tuple[int, int, set[str]]:
        """Note new and changed items, hold those whose user has no mailbox able to send,
        and name the mailboxes to wake. The cursor moves by compare-and-set."""
        with self.sessions.begin() as s:
            mirror.ensure_feed(s, org_id, KIND)
            cursor = mirror.get_feed(s, org_id, KIND).value
        changes = calls = 0
        woken: set[str] = set()
        try:
            while True:
                try:
                    items, nxt = self.outbox.outbox_since(org_id, cursor)
                except CursorExpired:
                    items, nxt = self.outbox.outbox_since(org_id, None)
                    cursor = None
                calls += 1
                items = [i if isinstance(i, OutgoingMessage) else OutgoingMessage.model_validate(i) for i in items]
                with self.sessions.begin() as s:
                    outbox_store.note_items(s, org_id, items)
                    woken |= self._route(s, org_id, {i.user_id for i in items})
                    if not items or nxt == cursor:
                        mirror.touch(s, org_id, KIND)
                        return changes, calls, woken
                    if mirror.advance(s, org_id, KIND, cursor, nxt) is None:
                        return changes, calls, woken
                changes += len(items)
                cursor = nxt
                _heartbeat(changes)
        except ConnectorError as exc:
            raise to_application_error(exc) from None

    def _route(self, s, org_id: str, users: set[str]) -> set[str]:
        """The connections to wake for these users' waiting items; items of a user with no
        active mailbox are held, with the reason shown on the platform's item."""
        by_user: dict[str, Any] = {}
        for c in repo.list_connections(s, org_id=org_id):
            if c.user_id in users and (c.user_id not in by_user or c.status == "active"):
                by_user[c.user_id] = c
        wake: set[str] = set()
        now = time.time()
        for user in users:
            waiting = outbox_store.waiting_for(s, org_id, user, now)
            if not waiting:
                continue
            conn = by_user.get(user)
            if conn is not None and conn.status == "active":
                wake.add(conn.id)
                continue
            reason = HOLD_REASONS.get(conn.status, "no_connected_mailbox") if conn is not None else "no_connected_mailbox"
            fresh = [r.item_id for r in waiting if not (r.state == "held" and r.reason == reason)]
            outbox_store.hold(s, org_id, fresh, reason)
            for item_id in fresh:
                self._tell(org_id, item_id, "held", reason=reason)
        return wake

    def _tell(self, org_id: str, item_id: str, state: str, **fields: Any) -> None:
        """Report a state to the platform; a move it refuses (the item ended there, e.g.
        cancelled) is not an error of ours."""
        try:
            self.outbox.set_outgoing_state(org_id, item_id, state, **fields)
        except ValidationRejected:
            pass

    # -- a mailbox's cycle ---------------------------------------------------------
    def fetch_mailbox(self, ref: CycleRef) -> FetchResult:
        """Nothing to read: the sent copies come back through the mail kind's delta."""
        return FetchResult(stream="send:mailbox")

    def fetch_platform(self, ref: CycleRef) -> FetchResult:
        with self.sessions() as s:
            sender = self._sender(s, ref.connection_id)
            feed = mirror.get_feed(s, sender.info.org_id, KIND)
        result = FetchResult(stream="send:platform")
        if feed is None or feed.updated_at < time.time() - READER_SILENT_S:
            changes, calls, _ = self._read_outbox(sender.info.org_id)
            result.fetched, result.calls = changes, calls
        return result

    def plan(self, ref: CycleRef, approve_mass_delete: bool = False) -> PlanSummary:
        with self.sessions.begin() as s:
            sender = self._sender(s, ref.connection_id)
            waiting = outbox_store.waiting_for(s, sender.info.org_id, sender.info.user_id, time.time())
        return PlanSummary(planned=len(waiting), outcomes={"apply": len(waiting)} if waiting else {})

    def write(self, ref: CycleRef) -> WriteSummary:
        summary = WriteSummary()
        with self.sessions() as s:
            sender = self._sender(s, ref.connection_id)
            waiting = outbox_store.waiting_for(s, sender.info.org_id, sender.info.user_id, time.time())
        if not waiting:
            return summary
        if sender.status != "active":
            # a mailbox that cannot send now holds its outbox; the items say why
            reason = HOLD_REASONS.get(sender.status, "mailbox_inactive")
            with self.sessions.begin() as s:
                outbox_store.hold(s, sender.info.org_id, [r.item_id for r in waiting], reason)
            for r in waiting:
                self._tell(sender.info.org_id, r.item_id, "held", reason=reason)
            summary.deferred = len(waiting)
            return summary
        mailbox = self.send_for(sender.info)
        with activity_span("send.write", connection_id=ref.connection_id) as span:
            try:
                for row in self._drain(sender, waiting):
                    outcome = self._send_one(sender, mailbox, row.item_id)
                    if outcome == "sent":
                        summary.created["mailbox"] = summary.created.get("mailbox", 0) + 1
                        summary.applied += 1
                    elif outcome == "failed":
                        summary.rejected += 1
                    else:
                        summary.deferred += 1
                    _heartbeat(summary.applied)
            except ConnectorError as exc:
                raise to_application_error(exc) from None
            span.set(sent=summary.applied, failed=summary.rejected, deferred=summary.deferred)
        summary.calls["mailbox"] = getattr(mailbox, "calls_made", 0)
        return summary

    def _drain(self, sender: _Sender, first: list):
        """Every item waiting now, page after page (a burst of 500 is sent in one activity,
        not 200 a cycle); an item met once in this activity is not taken again."""
        seen: set[str] = set()
        page = first
        while True:
            fresh = [r for r in page if r.item_id not in seen]
            if not fresh:
                return
            for row in fresh:
                seen.add(row.item_id)
                yield row
            with self.sessions() as s:
                page = outbox_store.waiting_for(s, sender.info.org_id, sender.info.user_id, time.time())

    def _send_one(self, sender: _Sender, mailbox: MailboxSend, item_id: str) -> str:
        org = sender.info.org_id
        found = self.outbox.get_outgoing(org, [item_id])
        item = found[0] if found else None
        if item is not None and not isinstance(item, OutgoingMessage):
            item = OutgoingMessage.model_validate(item)
        if item is None or item.state == "failed":
            with self.sessions.begin() as s:
                outbox_store.finish(s, org, item_id, "failed", reason=(item.reason if item else None) or "cancelled")
            return "failed"
        if item.state == "sent":  # an earlier attempt got as far as telling the platform
            with self.sessions.begin() as s:
                outbox_store.finish(s, org, item_id, "sent", provider_message_id=item.provider_message_id,
                                    provider_thread_id=item.provider_thread_id)
            return "sent"
        with self.sessions.begin() as s:
            mid = outbox_store.choose_message_id(s, org, item_id, new_message_id(item_id, sender.address.email))
        before = self._take(org, item_id, sender.info.connection_id)
        if before is None:
            return "deferred"  # another attempt keeps renewing it: leave it to that one
        self._tell(org, item_id, "sending", message_id=mid)
        raw = self._compose(sender, item, mid)
        sent: SentRef | None = mailbox.find_sent(mid) if before > 0 else None
        if sent is None:
            try:
                sent = mailbox.send(raw, reply_to_message_id=item.reply_to_key)
            except SendRejected as exc:
                with self.sessions.begin() as s:
                    outbox_store.finish(s, org, item_id, "failed", reason=exc.reason)
                self._tell(org, item_id, "failed", reason=exc.reason)
                return "failed"
            except ConnectorError:
                # This attempt is over without knowing whether the provider sent it: the
                # next one looks in Sent first (attempts > 0), no lease to wait out.
                with self.sessions.begin() as s:
                    outbox_store.finish(s, org, item_id, "queued")
                raise
        sent = sent if isinstance(sent, SentRef) else SentRef.model_validate(sent)
        with self.sessions.begin() as s:
            outbox_store.finish(s, org, item_id, "sent", provider_message_id=sent.provider_message_id,
                                provider_thread_id=sent.provider_thread_id)
        self._tell(org, item_id, "sent", message_id=mid, provider_message_id=sent.provider_message_id,
                   provider_thread_id=sent.provider_thread_id)
        self._log(sender, item, raw)
        return "sent"

    def _take(self, org: str, item_id: str, connection_id: str, tries: int = 3) -> int | None:
        """Take the item's lease, waiting out one a lost attempt left (heartbeating)."""
        for _ in range(tries):
            with self.sessions.begin() as s:
                before = outbox_store.begin_attempt(s, org, item_id, connection_id, self.lease_s)
                left = outbox_store.lease_left(s, org, item_id) if before is None else 0.0
            if before is not None:
                return before
            _sleep_heartbeating(left + 0.05, tuple)
        return None

    def _compose(self, sender: _Sender, item: OutgoingMessage, mid: str) -> bytes:
        references: list[str] = []
        if item.reply_to_key:
            with self.sessions() as s:
                claim = mail_store.get_claim(s, sender.info.org_id, item.reply_to_key)
            if claim is not None and claim.thread_key != item.reply_to_key and not claim.weak_thread:
                references = [claim.thread_key]
        return compose(item, sender=sender.address, message_id=mid, in_reply_to=item.reply_to_key,
                       references=references)

    def _log(self, sender: _Sender, item: OutgoingMessage, raw: bytes) -> None:
        """Log the sent message on the record it was written on, at once; its copy coming
        back through the mail delta finds the claim and adds nothing."""
        org, cid = sender.info.org_id, sender.info.connection_id
        msg = parse_raw(raw, bodies=sender.policy.bodies).model_copy(update={"direction": "sent"})
        recipients = [a.email for a in msg.participants() if a.email != sender.address.email]
        people = {e: [p if isinstance(p, Person) else Person.model_validate(p) for p in found]
                  for e, found in self.platform.people_by_email(org, recipients).items()} if recipients else {}
        contact_ids = sorted({p.id for ps in people.values() for p in ps if p.kind == "contact"})
        opportunities = self.platform.open_opportunities(org, contact_ids) if contact_ids else {}
        # the same association rules as logged mail; what is ambiguous is left to the
        # record it was written on (the mail kind's copy opens no second review)
        found = associate(msg, people=people, accounts={}, opportunities=opportunities,
                          policy=sender.policy.model_copy(update={"ambiguity": "none"}),
                          own_emails={sender.address.email})
        assoc = list(found.chosen)
        if item.record is not None:
            assoc.insert(0, item.record)
        thread = thread_identity(msg, sender.policy.own_domains)
        log = to_log(msg, key=message_key(msg), thread=thread, level=sender.policy.visibility,
                     users=(sender.info.user_id,), associations=tuple(dict.fromkeys(assoc)),
                     attachments_enabled=sender.policy.attachments)
        with self.sessions.begin() as s:
            claim = mail_store.claim(s, org, log.key, thread_key=log.thread_key, weak_thread=log.weak_thread,
                                     connection_id=cid, visibility=log.visibility,
                                     weak_key=weak_keys(msg, sender.policy.own_domains)[0])
        result = self.platform.log_emails(org, [log])[0]
        if result.error is None and result.record is not None and claim.held_by(cid):
            with self.sessions.begin() as s:
                mail_store.set_logged(s, org, log.key, activity_id=result.record.external_id,
                                      visibility=result.record.etag or log.visibility)

    def handle_rejections(self, ref: CycleRef) -> RejectionSummary:
        return RejectionSummary()

    def retry_quarantined(self, connection_id: str) -> int:
        return 0

    def summarize(self, connection_id: str) -> StoreSummary:
        """The outbox of this mailbox's user, by state (sent, failed, held, ...)."""
        with self.sessions() as s:
            conn = repo.get_connection(s, connection_id)
            by_state = outbox_store.counts(s, conn.org_id, conn.user_id) if conn is not None else {}
        return StoreSummary(outbox=by_state)

    def activities(self) -> list:
        steps = (self.fetch_mailbox, self.fetch_platform, self.plan, self.write, self.handle_rejections,
                 self.retry_quarantined, self.summarize, self.read_platform)
        return [as_activity(f"{KIND}.{step.__name__}", step) for step in steps]
