"""A kind of data is added without touching the contacts code path.

The kind here exists only in this test: tasks, with a model, pure rules and
in-memory connectors of its own, registered with the worker by the test alone.
It runs through the real workflow on the dev server beside contacts: in the fixed
order (contacts first), with its own section in the state query, its own rows in
the shared store, and its failures kept to itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

import pytest
from pydantic import BaseModel, ConfigDict, field_validator

from activities.pipeline import KindPipeline
from models.record import SideRecord
from models.workflow import MailboxSyncInput
from store import repo
from store.db import make_engine, session_factory
from sync.kinds import KindRules
from sync.matching import Match, MatchScore, Thresholds
from tests.e2e_rig import Rig, throwaway_keyring
from tests.memory_connectors import MemoryMailbox, MemoryPlatform, unavailable
from workers import client as api
from workers.scenario import build_scenario
from workers.temporal_client import TASK_QUEUE
from workers.worker import build_activities, make_worker
from workflows.mailbox_sync import MailboxSyncWorkflow, workflow_id


class Task(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str = ""
    status: str = ""
    tags: tuple[str, ...] = ()

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: object) -> tuple[str, ...]:
        return tuple(sorted(set(value or ())))


TaskRecord = SideRecord[Task]


def _title(task: Task) -> str:
    return " ".join(task.title.casefold().split())


class TitleIndex:
    """Tasks are the same task when their titles are."""

    def __init__(self) -> None:
        self._by_title: dict[str, set] = {}

    def add(self, key, task: Task) -> None:
        self._by_title.setdefault(_title(task), set()).add(key)

    def best(self, task: Task, thresholds: Thresholds = Thresholds(), *, exclude: Collection = ()) -> Match:
        keys = sorted(k for k in self._by_title.get(_title(task), ()) if k not in exclude)
        return Match("auto", keys[0], 1.0, ("same_title",)) if keys else Match("none", None, 0.0, ())


TASKS = KindRules(
    name="tasks",
    model=Task,
    problems=lambda task, settings: [] if task.title.strip() else ["title: empty"],
    keys=lambda task: {f"title:{_title(task)}"},
    new_index=TitleIndex,
    score=lambda a, b: MatchScore(1.0 if _title(a) == _title(b) else 0.0, ()),
)


@pytest.fixture
def urls(tmp_path):
    return f"sqlite:///{tmp_path/'store.db'}", f"sqlite:///{tmp_path/'crm.db'}"


def _titles(records: dict[str, Task]) -> list[str]:
    return sorted(t.title for t in records.values())


async def test_a_test_only_kind_runs_beside_contacts_through_the_real_workflow(temporal_env, urls):
    store_url, crm_url = urls
    sc = build_scenario(store_url, crm_url, connection_id=f"k-{uuid.uuid4().hex[:6]}",
                        org_id=f"org-{uuid.uuid4().hex[:6]}")
    tasks_mailbox = MemoryMailbox(record=TaskRecord, id_prefix="task")
    tasks_platform = MemoryPlatform(record=TaskRecord)
    tasks_mailbox.user_create(Task(title="Write spec", status="open"))
    tasks_mailbox.user_create(Task(title="Call Ada", status="open", tags=("sales",)))
    tasks_platform.user_create(sc.org_id, Task(title="call  ada", status="open"), owner=sc.user_id)
    tasks_platform.user_create(sc.org_id, Task(title="Review PR", status="open"), owner=sc.user_id)
    tasks_platform.user_create(sc.org_id, Task(title="Someone else's", status="open"), owner="user_2")

    sessions = session_factory(make_engine(store_url))
    tasks = KindPipeline(sessions, TASKS, tasks_platform, lambda info: tasks_mailbox)
    tq = f"{TASK_QUEUE}-{uuid.uuid4().hex[:6]}"
    acts = build_activities(store_url, crm_url, keyring=throwaway_keyring())
    try:
        async with make_worker(temporal_env.client, acts, task_queue=tq, extra_activities=tasks.activities()):
            r = Rig(temporal_env, sc, tq)
            # The organisation's workflow reads both kinds' platform feeds.
            await api.start_org_sync(temporal_env.client, sc.org_id, task_queue=tq, poll_interval_s=3600,
                                     kinds=["tasks", "contacts"])
            handle = await temporal_env.client.start_workflow(
                MailboxSyncWorkflow.run,
                MailboxSyncInput(connection_id=sc.connection_id, org_id=sc.org_id, provider="google",
                                 poll_interval_s=3600, kinds=["tasks", "contacts"], activity_attempts=2),
                id=workflow_id(sc.connection_id), task_queue=tq)
            await r.wait_cycles(1)
            await api.wait_for_org_cycles(temporal_env.client, sc.org_id, 1)
            st = await r.settle(0)
            assert st.last_error is None, st.last_error
            # Both ways, the same task once, another user's task left alone.
            assert _titles(tasks_mailbox.contacts()) == ["Call Ada", "Review PR", "Write spec"]
            assert _titles(tasks_platform.contacts(sc.org_id)) == ["Call Ada", "Review PR", "Someone else's",
                                                                   "Write spec"]
            # Each kind has its section; the connection's totals add them up.
            assert set(st.kinds) == {"contacts", "tasks"}
            assert st.kinds["tasks"].store.links == 3 and st.kinds["contacts"].store.links > 10
            assert st.store.links == st.kinds["tasks"].store.links + st.kinds["contacts"].store.links
            # Fixed order: contacts first, whatever order the input named them in.
            history = await handle.fetch_history()
            order = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
                     if e.HasField("activity_task_scheduled_event_attributes")]
            assert order.index("contacts.plan") < order.index("tasks.fetch_mailbox")
            with sc.sessions() as s:
                assert repo.count_links(s, sc.connection_id, kind="tasks") == 3
                assert repo.count_links(s, sc.connection_id, kind="contacts") == st.kinds["contacts"].store.links

            # An edit on the mailbox reaches the platform.
            [write_spec] = [i for i, t in tasks_mailbox.contacts().items() if t.title == "Write spec"]
            tasks_mailbox.user_edit(write_spec, Task(title="Write spec", status="done"))
            st = await r.cycle()
            assert {t.title: t.status for t in tasks_platform.contacts(sc.org_id).values()}["Write spec"] == "done"

            # The tasks platform refuses writes: contacts keep syncing, tasks show the failure.
            tasks_platform.faults.fail_calls(unavailable(), op="upsert", count=1000)
            tasks_mailbox.user_edit(write_spec, Task(title="Write spec", status="open"))
            mid = next(m for m in sc.resource_names if m in r.links())
            sc.mailbox.edit(mid, company="Kinds Ltd")
            st = await r.cycle()
            assert r.crm_contacts()[r.links()[mid]].company == "Kinds Ltd", "contacts went on"
            assert st.kinds["tasks"].last_error and st.kinds["contacts"].last_error is None
            assert st.health == "failing" and "tasks" in (st.last_error or "")
            tasks_platform.faults.clear()
            st = await r.cycle()
            assert st.health == "active" and st.kinds["tasks"].last_error is None
            assert {t.title: t.status for t in tasks_platform.contacts(sc.org_id).values()}["Write spec"] == "open"

            # The tasks feed goes down: the organisation's tasks read shows it, its contacts
            # read goes on, and no mailbox cycle fails for it (they pull from the store).
            tasks_platform.faults.fail_calls(unavailable(), op="changes", count=1000)
            pid = r.links()[mid]
            sc.crm.user_edit(sc.org_id, pid, job_title="Feed Tester", enforce_rules=False)
            st = await r.cycle()
            assert sc.mailbox.contacts()[mid].job_title == "Feed Tester"
            org = await api.org_state(temporal_env.client, sc.org_id)
            assert org.kinds["tasks"].last_error and org.kinds["contacts"].last_error is None
            assert st.health == "active"
            tasks_platform.faults.clear()
    finally:
        sc.close()
