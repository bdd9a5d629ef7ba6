"""Keep a mailbox's push subscriptions alive, on Temporal (retries, timeouts, visibility).

Which subscriptions a connection needs is data: the kinds of data it syncs (its
settings' `kinds`, default contacts, as `MailboxSyncInput.kinds`) looked up in its
provider's push table (`connectors.registry.Provider.push`). A kind the provider has
no push for is counted `unsupported` and polled only. The activity's signature stays
`subscriptions.maintain(connection_id)`: running workflows and recorded histories call
it that way.

Two ways of keeping one (`PushNeed.mode`):

- Graph subscriptions (contacts, messages) expire (at most 10,080 minutes) and can be
  removed by Microsoft (lifecycle `subscriptionRemoved`, `reauthorizationRequired`).
  Each cycle makes sure one live subscription exists per resource and is renewed well
  before expiry; one Microsoft dropped is subscribed again. They need a public URL.
- Gmail `users.watch` lasts 7 days and Google recommends renewing daily: the watch is
  issued again (same topic) once the last one is a day old. It pushes to a Pub/Sub
  topic (settings `gmail_topic`, else the deployment's CONCORD_GMAIL_TOPIC); none
  configured means poll only. The row is keyed by the sha256 of the mailbox's address
  (what api/webhooks.py looks a push up by) and carries the topic: a new topic stops
  the old watch first (Gmail refuses a second topic while one is active).

- Calendar `events.watch` channels (PushNeed mode "subscription", built by
  `calendar_for`): a channel's token is the row's secret and its resourceId the row's
  resource (what `channels/stop` needs). Channels cannot be extended: the connector's
  `renew_subscription` answers NotFound, so a channel near its end is replaced by a
  new one.

Notifications are only a hint: the poll timer still runs, so a dropped notification
costs latency, never data.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Callable

from temporalio import activity

from activities.pipeline import ConnectionInfo, MailboxFactory
from activities.errors import to_application_error
from connectors import registry
from models.errors import ConnectorError, Fatal, NotFound, ValidationRejected
from models.mail import MailFetchOptions
from store import repo
from store import subscriptions as subs

#: renew when less than this is left (a day of slack for a job that runs every cycle)
RENEW_BEFORE_S = 24 * 3600
#: ~3 days: room for several renewal attempts before the 7-day cap
LIFETIME_MINUTES = 4230
#: Gmail watches last 7 days; renewed once the last one is a day old (Google's advice)
WATCH_LIFETIME_S = 7 * 86400
WATCH_EVERY_S = 86400
#: what a connection syncs when its settings do not say (MailboxSyncInput.kinds' default)
DEFAULT_KINDS = ("contacts",)
LIVE = ("active", "needs_renewal")


def _epoch(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _epoch_ms(value: Any) -> float | None:
    try:
        return int(value) / 1000.0
    except (TypeError, ValueError):
        return None


def synced_kinds(settings: dict) -> list[str]:
    """The kinds of data a connection syncs, from its settings (`kinds`)."""
    kinds = settings.get("kinds")
    if not isinstance(kinds, (list, tuple)) or not all(isinstance(k, str) for k in kinds) or not kinds:
        return list(DEFAULT_KINDS)
    return list(dict.fromkeys(kinds))


class SubscriptionActivities:
    def __init__(self, sessions, mailbox_for: MailboxFactory, *, webhook_base_url: str | None = None,
                 renew_before_s: float = RENEW_BEFORE_S, lifetime_minutes: int = LIFETIME_MINUTES,
                 mail_for: Callable[[ConnectionInfo, MailFetchOptions], Any] | None = None,
                 gmail_topic: str | None = None, clock: Callable[[], float] = time.time,
                 calendar_for: Callable[[ConnectionInfo], Any] | None = None) -> None:
        self.sessions = sessions
        self.mailbox_for = mailbox_for
        self.mail_for = mail_for
        self.calendar_for = calendar_for
        self.webhook_base_url = webhook_base_url
        self.gmail_topic = gmail_topic
        self.renew_before_s = renew_before_s
        self.lifetime_minutes = lifetime_minutes
        self.clock = clock

    def all(self) -> list:
        return [self.maintain]

    @activity.defn(name="subscriptions.maintain")
    def maintain(self, connection_id: str) -> dict[str, int]:
        """Create, renew or replace the subscriptions this connection's kinds need; counts only."""
        with self.sessions() as s:
            conn = repo.get_connection(s, connection_id)
            rows = subs.list_for_connection(s, connection_id) if conn is not None else []
        counts = {"created": 0, "renewed": 0, "replaced": 0, "unchanged": 0, "unsupported": 0}
        if conn is None or conn.status != "active":
            return counts
        settings = dict(conn.settings or {})
        info = ConnectionInfo(conn.id, conn.org_id, conn.user_id, conn.provider, conn.account_ref, settings)
        provider = registry.get(conn.provider)
        try:
            for kind in synced_kinds(settings):
                need = provider.push.get(kind)
                if need is None:
                    counts["unsupported"] += 1  # no push for this kind at this provider: poll only
                    continue
                mine = [r for r in rows if r.provider == need.kind.name and r.status in LIVE
                        and (need.resource is None or r.resource == need.resource)]
                connector = _Lazy(lambda kind=kind: self._connector(kind, info))
                keep = self._keep_watch if need.mode == "watch" else self._keep_subscription
                counts[keep(connector, connection_id, need, mine, settings)] += 1
        except ConnectorError as exc:
            raise to_application_error(exc) from None
        return counts

    # ---- connectors ---------------------------------------------------------------------

    def _connector(self, kind: str, info: ConnectionInfo):
        """The connector that holds `kind`'s subscription calls: the kind's own."""
        if kind == "mail":
            if self.mail_for is None:
                raise Fatal("no mail connector configured for subscriptions")
            return self.mail_for(info, MailFetchOptions())
        if kind == "calendar":
            if self.calendar_for is None:
                raise Fatal("no calendar connector configured for subscriptions")
            return self.calendar_for(info)
        return self.mailbox_for(info)

    # ---- Graph-style subscriptions --------------------------------------------------------

    def _keep_subscription(self, connector: "_Lazy", connection_id: str, need: registry.PushNeed, live: list,
                           settings: dict) -> str:
        base = settings.get("webhook_base_url") or self.webhook_base_url
        if not base:
            return "unsupported"  # no public URL: poll only
        url = base.rstrip("/") + need.kind.webhook_path
        if not live:
            self._create(connector.get(), connection_id, url, need)
            return "created"
        outcome = "unchanged"
        now = self.clock()
        for row in live:
            due = row.status == "needs_renewal" or (row.expires_at or 0) - now < self.renew_before_s
            if not due:
                continue
            try:
                reply = connector.get().renew_subscription(row.external_id, minutes=self.lifetime_minutes)
            except NotFound:
                # Microsoft dropped it: subscribe again (a delta covers the gap).
                with self.sessions.begin() as s:
                    subs.mark_status(s, row.id, "removed")
                self._create(connector.get(), connection_id, url, need)
                outcome = "replaced"
                continue
            with self.sessions.begin() as s:
                subs.set_expiry(s, row.id, _epoch(reply.get("expirationDateTime")))
            if outcome == "unchanged":
                outcome = "renewed"
        return outcome

    def _create(self, graph, connection_id: str, url: str, need: registry.PushNeed) -> None:
        secret = subs.new_secret()
        reply = graph.create_subscription(url, secret, minutes=self.lifetime_minutes, lifecycle_url=url + "/lifecycle")
        with self.sessions.begin() as s:
            subs.create_subscription(s, connection_id=connection_id, provider=need.kind.name, external_id=reply["id"],
                                     resource=need.resource or reply.get("resource", ""),
                                     expires_at=_epoch(reply.get("expirationDateTime")), secret=secret)

    # ---- Gmail-style watches --------------------------------------------------------------

    def _keep_watch(self, connector: "_Lazy", connection_id: str, need: registry.PushNeed, live: list,
                    settings: dict) -> str:
        topic = settings.get("gmail_topic") or self.gmail_topic
        if not topic:
            return "unsupported"  # no Pub/Sub topic: poll only
        now = self.clock()
        current = next((r for r in live if r.resource == topic), None)
        if current is not None and current.status == "active" and current.expires_at is not None \
                and current.expires_at - now > max(self.renew_before_s, WATCH_LIFETIME_S - WATCH_EVERY_S):
            return "unchanged"  # watched (again) less than a day ago
        mail = connector.get()
        other_topic = any(r.resource != topic for r in live)
        if other_topic:
            mail.stop_watch()  # one topic per mailbox: a second one is refused while the first is active
        try:
            reply = mail.watch(topic)
        except ValidationRejected:
            if other_topic:
                raise
            # A watch on another topic we hold no row for (a lost row, a changed
            # setting): stop it, then watch ours.
            mail.stop_watch()
            reply = mail.watch(topic)
            other_topic = True
        key = subs.email_key(mail.address())
        with self.sessions.begin() as s:
            for r in live:
                if r.external_id != key:
                    subs.mark_status(s, r.id, "removed")
            subs.create_subscription(s, connection_id=connection_id, provider=need.kind.name, external_id=key,
                                     resource=topic, expires_at=_epoch_ms(reply.get("expiration")),
                                     generate_secret=False)
        if other_topic:
            return "replaced"
        return "renewed" if live else "created"


class _Lazy:
    """A connector built on first use: an unchanged subscription needs none. Not closed
    here, as the pipelines do not (a factory may hand out a shared one)."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._value: Any = None

    def get(self) -> Any:
        if self._value is None:
            self._value = self._build()
        return self._value
