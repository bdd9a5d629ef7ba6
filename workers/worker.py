"""The sync worker: hosts MailboxSyncWorkflow and the contacts activities.

Activities are synchronous (the Google client is), so they run on a thread pool;
the pool size bounds concurrent provider calls per worker process. Scale out by
running more workers on the same task queue.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os

from temporalio.worker import Worker

from activities.contacts import ContactActivities, MailboxFactory
from platforms.reference_crm.adapter import ReferenceCrmContacts
from store.db import make_engine, migrate, session_factory
from workers.mailboxes import build_mailbox
from workers.telemetry import setup_tracing
from workers.temporal_client import TASK_QUEUE, connect
from workflows.mailbox_sync import MailboxSyncWorkflow


def build_activities(store_url: str, crm_url: str, mailbox_for: MailboxFactory = build_mailbox) -> ContactActivities:
    migrate(store_url)
    sessions = session_factory(make_engine(store_url))
    return ContactActivities(sessions, ReferenceCrmContacts(crm_url), mailbox_for)


def make_worker(client, activities: ContactActivities, *, task_queue: str = TASK_QUEUE, max_threads: int = 16) -> Worker:
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[MailboxSyncWorkflow],
        activities=activities.all(),
        activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=max_threads),
        max_concurrent_activities=max_threads,
    )


async def serve(target: str, store_url: str, crm_url: str, task_queue: str = TASK_QUEUE) -> None:
    setup_tracing("concord-worker")
    client = await connect(target)
    worker = make_worker(client, build_activities(store_url, crm_url), task_queue=task_queue)
    await worker.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a Concord sync worker")
    parser.add_argument("--temporal", default=os.environ.get("CONCORD_TEMPORAL", "127.0.0.1:7233"))
    parser.add_argument("--store-url", default=os.environ.get("CONCORD_STORE_URL", "sqlite:///.concord/store.db"))
    parser.add_argument("--crm-url", default=os.environ.get("CONCORD_CRM_URL", "sqlite:///.concord/crm.db"))
    parser.add_argument("--task-queue", default=TASK_QUEUE)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.temporal, args.store_url, args.crm_url, args.task_queue))


if __name__ == "__main__":
    main()
