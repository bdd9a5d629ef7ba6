"""The sync worker: hosts MailboxSyncWorkflow and its activities.

Activities are synchronous (the Google client is), so they run on a thread pool;
the pool size bounds concurrent provider calls per worker process. Scale out by
running more workers on the same task queue.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import sys
from dataclasses import dataclass

from temporalio.worker import Worker

import settings
from activities.boundary import ScrubFailures
from activities.connection import ConnectionActivities
from activities.kinds import build_pipelines
from activities.mail import MailFactory
from activities.pipeline import KindPipeline, MailboxFactory
from activities.reconcile import ReconcileActivities
from activities.reviews import ReviewActivities
from activities.subscriptions import SubscriptionActivities
from store.db import make_engine, migrate, session_factory
from store.vault import KeyRing, TokenVault, VaultConfigError
from workers.client import TemporalUnreachable, connect_checked
from connectors.credentials import ProviderConfig
from workers.mailboxes import CalendarBuilder, MailBuilder, MailboxBuilder
from models.errors import Fatal
from telemetry import setup_tracing
from telemetry.metrics import install_health_listener, setup_metrics
from workers.temporal_client import TASK_QUEUE
from workflows.mailbox_sync import MailboxSyncWorkflow
from workflows.org_sync import OrgSyncWorkflow
from workflows.reconcile import ReconcileWorkflow

log = logging.getLogger(__name__)


@dataclass
class Activities:
    #: one pipeline per kind of data, by kind name
    pipelines: dict[str, KindPipeline]
    reviews: ReviewActivities
    connection: ConnectionActivities
    subscriptions: SubscriptionActivities
    #: reconciliation (both ends compared independently); built from `pipelines` when not given
    reconcile: ReconcileActivities | None = None

    def all(self) -> list:
        steps = [a for p in self.pipelines.values() for a in p.activities()]
        reconcile = self.reconcile or ReconcileActivities(self.reviews.sessions, self.pipelines)
        return (steps + self.reviews.activities() + self.connection.all() + self.subscriptions.all()
                + reconcile.all())


#: Said when the vault key is missing: a worker without it could read no token.
NO_KEY_HINT = ("generate one with: python -c \"from store.vault import generate_key; print('k1:' + generate_key())\" "
               "and keep it apart from the database")


def build_activities(store_url: str, crm_url: str, mailbox_for: MailboxFactory | None = None, *,
                     keyring: KeyRing | None = None, webhook_base_url: str | None = None,
                     mail_for: MailFactory | None = None, gmail_topic: str | None = None) -> Activities:
    """The worker's activities. `keyring` defaults to CONCORD_VAULT_KEYS; without either this
    raises VaultConfigError: a throwaway key would fail every cycle with VaultKeyMissing later.
    `webhook_base_url` (CONCORD_PUBLIC_URL) is where Graph posts notifications; `gmail_topic`
    (CONCORD_GMAIL_TOPIC, `projects/P/topics/T`) is where Gmail watches publish."""
    config = settings.load()
    migrate(store_url)
    engine = make_engine(store_url)
    sessions = session_factory(engine)
    vault = TokenVault(engine, keyring or KeyRing.from_env(config))
    providers = ProviderConfig.from_env(config)
    builder = MailboxBuilder(sessions, vault, providers)
    mailboxes = mailbox_for or builder
    mails = mail_for or MailBuilder(builder.credentials)
    calendars = CalendarBuilder(builder.credentials)
    return Activities(
        pipelines=build_pipelines(sessions, crm_url, mailboxes, mails, calendars),
        reviews=ReviewActivities(sessions),
        connection=ConnectionActivities(sessions, vault, providers, credentials=builder.credentials),
        subscriptions=SubscriptionActivities(
            sessions, mailboxes, webhook_base_url=webhook_base_url or config.public_url,
            mail_for=mails, gmail_topic=gmail_topic or config.gmail_topic,
            calendar_for=calendars),
    )


def make_worker(client, activities: Activities, *, task_queue: str = TASK_QUEUE, max_threads: int = 16,
                extra_activities: list | None = None) -> Worker:
    """`extra_activities`: more kinds' steps (a test-only kind registers its own this way)."""
    install_health_listener()  # the workflows' health figures -> OpenTelemetry instruments
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[MailboxSyncWorkflow, OrgSyncWorkflow, ReconcileWorkflow],
        activities=activities.all() + list(extra_activities or []),
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=max_threads),
        max_concurrent_activities=max_threads,
        interceptors=[ScrubFailures()],
    )


async def serve(target: str, store_url: str, crm_url: str, task_queue: str = TASK_QUEUE, *,
                keyring: KeyRing) -> None:
    setup_tracing("concord-worker")
    setup_metrics("concord-worker")
    client = await connect_checked(target)
    worker = make_worker(client, build_activities(store_url, crm_url, keyring=keyring), task_queue=task_queue)
    await worker.run()


def main(argv: list[str] | None = None) -> None:
    try:
        config = settings.load()
    except settings.SettingsError as exc:
        sys.exit(str(exc))
    parser = argparse.ArgumentParser(description="Run a Concord sync worker")
    parser.add_argument("--temporal", default=config.temporal)
    parser.add_argument("--store-url", default=config.store_url)
    parser.add_argument("--crm-url", default=config.crm_url)
    parser.add_argument("--task-queue", default=TASK_QUEUE)
    args = parser.parse_args(argv)
    # Refuse to start rather than run cycles that all fail on tokens nobody can open.
    try:
        keyring = KeyRing.from_env(config)
    except VaultConfigError as exc:
        sys.exit(f"{exc}; {NO_KEY_HINT}")
    try:
        asyncio.run(serve(args.temporal, args.store_url, args.crm_url, args.task_queue, keyring=keyring))
    except TemporalUnreachable as exc:
        sys.exit(str(exc))
    except Fatal as exc:  # a telemetry setting it cannot honour (CONCORD_PROMETHEUS_PORT without the extra)
        sys.exit(str(exc))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
