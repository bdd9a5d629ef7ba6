"""Keep a mailbox's push subscriptions alive, on Temporal (retries, timeouts, visibility).

Graph contact subscriptions expire (at most 10,080 minutes) and can be removed by
Microsoft (lifecycle `subscriptionRemoved`, `reauthorizationRequired`). Each cycle the
workflow asks this activity to make sure one live subscription exists and is renewed
well before expiry. Notifications are only a hint: the poll timer still runs, so a
dropped notification costs latency, never data.

Google People has no push for contacts; Gmail watches and Calendar channels belong to
the mail and calendar capabilities and will be kept here the same way.
"""

from __future__ import annotations

import time
from datetime import datetime

from temporalio import activity

from activities.pipeline import ConnectionInfo, MailboxFactory
from activities.errors import to_application_error
from connectors import registry
from models.errors import ConnectorError, NotFound
from store import repo
from store import subscriptions as subs

#: renew when less than this is left (a day of slack for a job that runs every cycle)
RENEW_BEFORE_S = 24 * 3600
#: ~3 days: room for several renewal attempts before the 7-day cap
LIFETIME_MINUTES = 4230


def _epoch(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class SubscriptionActivities:
    def __init__(self, sessions, mailbox_for: MailboxFactory, *, webhook_base_url: str | None = None,
                 renew_before_s: float = RENEW_BEFORE_S, lifetime_minutes: int = LIFETIME_MINUTES) -> None:
        self.sessions = sessions
        self.mailbox_for = mailbox_for
        self.webhook_base_url = webhook_base_url
        self.renew_before_s = renew_before_s
        self.lifetime_minutes = lifetime_minutes

    def all(self) -> list:
        return [self.maintain]

    @activity.defn(name="subscriptions.maintain")
    def maintain(self, connection_id: str) -> dict[str, int]:
        """Create, renew or replace this connection's subscription; counts only."""
        with self.sessions() as s:
            conn = repo.get_connection(s, connection_id)
            rows = subs.list_for_connection(s, connection_id) if conn is not None else []
        counts = {"created": 0, "renewed": 0, "replaced": 0, "unchanged": 0, "unsupported": 0}
        if conn is None or conn.status != "active":
            return counts
        base = (conn.settings or {}).get("webhook_base_url") or self.webhook_base_url
        push = registry.get(conn.provider).contacts_push
        if push is None or not base:
            counts["unsupported"] = 1  # no push for this provider's contacts, or no public URL: poll only
            return counts
        info = ConnectionInfo(conn.id, conn.org_id, conn.user_id, conn.provider, conn.account_ref,
                              dict(conn.settings or {}))
        graph = self.mailbox_for(info)
        url = base.rstrip("/") + push.webhook_path
        live = [r for r in rows if r.status in ("active", "needs_renewal")]
        now = time.time()
        try:
            if not live:
                self._create(graph, connection_id, url, push.name)
                counts["created"] = 1
                return counts
            for row in live:
                due = row.status == "needs_renewal" or (row.expires_at or 0) - now < self.renew_before_s
                if not due:
                    counts["unchanged"] += 1
                    continue
                try:
                    reply = graph.renew_subscription(row.external_id, minutes=self.lifetime_minutes)
                except NotFound:
                    # Microsoft dropped it: subscribe again (a delta covers the gap).
                    with self.sessions.begin() as s:
                        subs.mark_status(s, row.id, "removed")
                    self._create(graph, connection_id, url, push.name)
                    counts["replaced"] += 1
                    continue
                with self.sessions.begin() as s:
                    subs.set_expiry(s, row.id, _epoch(reply.get("expirationDateTime")))
                counts["renewed"] += 1
        except ConnectorError as exc:
            raise to_application_error(exc) from None
        return counts

    def _create(self, graph, connection_id: str, url: str, kind: str) -> None:
        secret = subs.new_secret()
        reply = graph.create_subscription(url, secret, minutes=self.lifetime_minutes, lifecycle_url=url + "/lifecycle")
        with self.sessions.begin() as s:
            subs.create_subscription(s, connection_id=connection_id, provider=kind, external_id=reply["id"],
                                     resource=reply.get("resource", ""), expires_at=_epoch(reply.get("expirationDateTime")),
                                     secret=secret)
