"""No activity failure carries a value into workflow history or the worker's log.

Each activity here fails the way real code does when it meets personal data: a
pydantic ValidationError quoting its input, a SQLAlchemy error quoting the
statement's parameters, a plain exception with the value in its message. With the
worker's ScrubFailures interceptor (what `workers.worker.make_worker` installs), the
pending activity's last failure, the ActivityTaskFailed event and the log name only
classes and codes.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.boundary import ScrubFailures
from activities.errors import to_application_error
from models.errors import RateLimited
from models.record import SideRecord
from tests.test_contacts_e2e import _decoded_payloads

SECRET = "grace.hopper.secret@example.org"


@activity.defn(name="boundary.pydantic")
def fails_validating() -> None:
    SideRecord.model_validate({"side": "mailbox", "external_id": "x", "updated_at": SECRET})


@activity.defn(name="boundary.sql")
def fails_in_sql() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (v TEXT UNIQUE)")
        conn.execute(sa.text("INSERT INTO t VALUES (:v)"), {"v": SECRET})
        conn.execute(sa.text("INSERT INTO t VALUES (:v)"), {"v": SECRET})


@activity.defn(name="boundary.plain")
def fails_plainly() -> None:
    raise KeyError(SECRET)


@activity.defn(name="boundary.rate_limited")
def rate_limited() -> None:
    raise to_application_error(RateLimited(f"throttled for {SECRET}", retry_after=0.1))


@workflow.defn(sandboxed=False)
class FailOnce:
    @workflow.run
    async def run(self, name: str) -> None:
        await workflow.execute_activity(name, start_to_close_timeout=timedelta(seconds=10),
                                        retry_policy=RetryPolicy(maximum_attempts=2, initial_interval=timedelta(seconds=0.1)))


@pytest.mark.parametrize("name", ["boundary.pydantic", "boundary.sql", "boundary.plain", "boundary.rate_limited"])
async def test_a_failing_activity_leaves_no_value_in_history_or_log(temporal_env, name, caplog):
    client = temporal_env.client
    tq = f"boundary-{uuid.uuid4().hex[:6]}"
    caplog.set_level(logging.DEBUG)
    async with Worker(client, task_queue=tq, workflows=[FailOnce],
                      activities=[fails_validating, fails_in_sql, fails_plainly, rate_limited],
                      activity_executor=concurrent.futures.ThreadPoolExecutor(2),
                      workflow_runner=UnsandboxedWorkflowRunner(), interceptors=[ScrubFailures()]):
        handle = await client.start_workflow(FailOnce.run, name, id=f"boundary-{uuid.uuid4().hex}", task_queue=tq)
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
    history = (await handle.fetch_history()).to_json_dict()
    text = json.dumps(history) + "\n".join(_decoded_payloads(history))
    assert "ACTIVITY_TASK_FAILED" in text or "activityTaskFailedEventAttributes" in text  # it is the failure
    assert SECRET not in text, "a value reached workflow history through a failure"
    assert SECRET not in str(err.value.cause) and SECRET not in repr(err.value.cause.cause)
    assert SECRET not in caplog.text, "a value reached the worker's log"
    # The failure still says what broke, by class.
    cause = err.value.cause.cause
    assert cause.type in ("ValidationError", "IntegrityError", "KeyError", "RateLimited")
