"""Histories recorded by earlier releases replay with today's workflow code.

Mailbox workflows run for months: a deploy meets histories written by older code.
Each file in tests/golden/ was recorded by `python -m tests.golden.record RELEASE`
with the release it names; a workflow change that breaks one of them must be put
behind `workflow.patched` (or the file re-recorded only once no such run can exist).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workers.temporal_client import DATA_CONVERTER
from workflows.mailbox_sync import MailboxSyncWorkflow
from workflows.org_sync import OrgSyncWorkflow

GOLDEN = sorted((Path(__file__).parent / "golden").glob("*.json"))


def test_there_are_golden_histories():
    assert len(GOLDEN) >= 3


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
async def test_golden_history_replays(path: Path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[MailboxSyncWorkflow, OrgSyncWorkflow], data_converter=DATA_CONVERTER)
    result = await replayer.replay_workflow(
        history, raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"
