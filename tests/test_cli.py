"""`concord` as a person runs it: the installed script in a subprocess, against the real
Temporal dev server and a real store. Every call ends with rc 0, or with one line on
stderr and a non-zero rc; never a traceback, never a hang, never a crash at exit.

Answers to reviews are checked against the store before the `resolve` signal goes out:
these tests read the workflow's history to see what was (not) signalled.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType

from models.workflow import Resolution
from store import repo
from store.db import make_engine, migrate, session_factory
from tests.e2e_rig import rig
from workers import client as api
from workers.cli import _parser
from workers.temporal_client import TASK_QUEUE

CONCORD = str(Path(sys.executable).with_name("concord"))


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without Concord settings, so defaults and flags decide."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORD_")}
    env["CONCORD_OTEL_EXPORTER"] = "none"
    env.update(extra)
    return env


async def concord(*argv: str, cwd: Path | None = None, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """Run the real CLI without blocking the event loop (a worker may be running in it)."""
    proc = await asyncio.create_subprocess_exec(CONCORD, *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                env=_env(**env), cwd=cwd)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())


def _target(temporal_env) -> str:
    return temporal_env.client.service_client.config.target_host


class World:
    """A store with two connections of one organisation and reviews in every state."""

    def __init__(self, tmp_path: Path) -> None:
        self.store_url = f"sqlite:///{tmp_path / 'store.db'}"
        migrate(self.store_url)
        self.sessions = session_factory(make_engine(self.store_url))
        tag = uuid.uuid4().hex[:8]
        self.org, self.a, self.b = f"org-{tag}", f"cli-a-{tag}", f"cli-b-{tag}"
        conflict_detail = {"rule": "manual_policy", "mailbox": {"company": "Initech"},
                           "platform": {"company": "Initrode"}, "base": {"company": "Globex"}}
        with self.sessions.begin() as s:
            repo.create_org(s, self.org, "CLI test organisation", {"policy": "manual"})
            for cid in (self.a, self.b):
                repo.create_connection(s, id=cid, org_id=self.org, user_id="user_1", provider="google",
                                       account_ref=f"acct-{cid}")
            self.conflict = repo.open_review(s, connection_id=self.a, kind="conflict", mailbox_id="people/c1",
                                             platform_id="crm_1", fields=["company"], detail=conflict_detail)
            self.duplicate = repo.open_review(s, connection_id=self.a, kind="duplicate", mailbox_id="people/c2",
                                              detail={"rule": "possible_duplicate", "candidate_side": "platform",
                                                      "candidate_id": "crm_2"})
            self.closed = repo.open_review(s, connection_id=self.a, kind="conflict", mailbox_id="people/c3",
                                           platform_id="crm_3", fields=["company"], detail=conflict_detail)
            repo.resolve_review(s, self.closed, {"choice": "platform"})
            self.others = repo.open_review(s, connection_id=self.b, kind="conflict", mailbox_id="people/c4",
                                           platform_id="crm_4", fields=["company"], detail=conflict_detail)


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


async def _resolve_signals(temporal_env, connection_id: str) -> list[int]:
    """Review ids the workflow was sent in `resolve` signals, from its history."""
    ids = []
    history = await api.handle(temporal_env.client, connection_id).fetch_history()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            attrs = event.workflow_execution_signaled_event_attributes
            if attrs.signal_name == "resolve":
                ids.append(Resolution.model_validate_json(attrs.input.payloads[0].data).review_id)
    return ids


async def _start_unpolled(temporal_env, connection_id: str, org_id: str) -> str:
    """The workflow, started on a task queue no worker polls: it records signals, answers no query."""
    queue = f"{TASK_QUEUE}-nobody-{uuid.uuid4().hex[:6]}"
    await api.start_sync(temporal_env.client, connection_id, org_id, "google", task_queue=queue)
    return queue


# --- the client API refuses answers that cannot apply ---------------------------------------


@pytest.mark.parametrize("case, reason", [
    ("absent", "has no review"),
    ("other_connection", "has no review"),
    ("closed", "is not open"),
    ("conflict_takes_no_link", "is a conflict"),
    ("duplicate_takes_no_mailbox", "is a duplicate"),
    ("merged_without_values", "needs the merged field values"),
    ("merged_with_unknown_field", "unknown fields: shoe_size"),
])
async def test_resolve_refuses_an_answer_that_does_not_fit(temporal_env, world, case, reason):
    await _start_unpolled(temporal_env, world.a, world.org)
    review, choice, fields = {
        "absent": (999_999, "mailbox", None),
        "other_connection": (world.others, "mailbox", None),
        "closed": (world.closed, "mailbox", None),
        "conflict_takes_no_link": (world.conflict, "link", None),
        "duplicate_takes_no_mailbox": (world.duplicate, "mailbox", None),
        "merged_without_values": (world.conflict, "merged", None),
        "merged_with_unknown_field": (world.conflict, "merged", {"shoe_size": "EU forty-four"}),
    }[case]
    with pytest.raises(api.InvalidResolution, match=reason) as err:
        await api.resolve(temporal_env.client, world.sessions, world.a, review, choice, fields)
    assert isinstance(err.value, ValueError)
    message = str(err.value)
    # (a value no random id can contain: the ids are hex)
    assert "\n" not in message and not any(v in message for v in ("Initech", "Initrode", "Globex", "forty-four"))
    assert await _resolve_signals(temporal_env, world.a) == [], "a refused answer is never signalled"
    with world.sessions() as s:
        assert "merged_fields" not in (repo.get_review(s, world.conflict).detail or {})


async def test_resolve_signals_answers_that_fit(temporal_env, world):
    await _start_unpolled(temporal_env, world.a, world.org)
    await api.resolve(temporal_env.client, world.sessions, world.a, world.duplicate, "link")
    await api.resolve(temporal_env.client, world.sessions, world.a, world.conflict, "merged", {"company": "Initech"})
    assert await _resolve_signals(temporal_env, world.a) == [world.duplicate, world.conflict]
    with world.sessions() as s:
        assert repo.get_review(s, world.conflict).detail["merged_fields"] == {"company": "Initech"}


async def test_cli_resolve_validates_against_the_store_then_signals(temporal_env, world):
    await _start_unpolled(temporal_env, world.a, world.org)
    t = ["--temporal", _target(temporal_env)]
    store = ["--store-url", world.store_url]
    refused = await concord(*t, "resolve", world.a, "9999", "mailbox", *store)
    assert refused.returncode == 1
    assert refused.stderr == f"concord resolve: connection {world.a} has no review 9999\n"
    wrong_kind = await concord(*t, "resolve", world.a, str(world.duplicate), "platform", *store)
    assert wrong_kind.returncode == 1 and "is a duplicate: the answer is one of link, create, ignore" in wrong_kind.stderr
    assert await _resolve_signals(temporal_env, world.a) == []
    ok = await concord(*t, "resolve", world.a, str(world.conflict), "platform", *store)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert await _resolve_signals(temporal_env, world.a) == [world.conflict]


# --- every command: one clear line and a non-zero exit on a wrong argument -------------------


async def test_every_command_with_a_wrong_argument_says_one_line(temporal_env, world, tmp_path):
    t = _target(temporal_env)
    known_unpolled = f"cli-u-{uuid.uuid4().hex[:8]}"
    with world.sessions.begin() as s:
        repo.create_connection(s, id=known_unpolled, org_id=world.org, user_id="user_1", provider="google",
                               account_ref=f"acct-{known_unpolled}")
    queue = await _start_unpolled(temporal_env, known_unpolled, world.org)
    store = ["--store-url", world.store_url]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = str(busy.getsockname()[1])
        cases = [
            ((), "the following arguments are required"),
            (("frobnicate",), "invalid choice: 'frobnicate'"),
            (("--temporal", t, "start", world.a, world.org, "yahoo", *store), "invalid choice: 'yahoo'"),
            (("--temporal", t, "start", "nope", world.org, "google", *store), "no connection nope in the store"),
            (("--temporal", t, "start", world.a, "org-other", "google", *store), f"is a google connection of {world.org}"),
            (("--temporal", t, "start", world.a, world.org, "google", "--store-url", f"sqlite:///{tmp_path}/gone.db"),
             "no store at"),
            *[(("--temporal", t, cmd, "nope"), "no workflow for connection nope")
              for cmd in ("wake", "state", "pause", "resume", "retry", "approve-deletes", "disconnect")],
            (("--temporal", t, "state", known_unpolled), f"no worker is polling task queue {queue}"),
            *[(("--temporal", t, cmd, "org-nope"), "no workflow for organisation org-nope")
              for cmd in ("org-state", "org-wake")],
            (("org-state",), "the following arguments are required: ORG"),
            (("reviews", "nope", *store), "no connection nope in the store at"),
            (("quarantine", "nope", *store), "no connection nope in the store at"),
            (("reviews", world.a, "--store-url", f"sqlite:///{tmp_path}/missing.db"), "no store at"),
            (("quarantine", world.a, "--store-url", "postgresql+psycopg://postgres@127.0.0.1:1/none"),
             "cannot read the store at"),
            (("--temporal", t, "resolve", world.a, "9999", "mailbox", *store), "has no review 9999"),
            (("--temporal", t, "resolve", world.a, "abc", "mailbox", *store), "invalid int value: 'abc'"),
            (("--temporal", t, "resolve", world.a, str(world.conflict), "maybe", *store), "invalid choice: 'maybe'"),
            (("--temporal", t, "resolve", world.a, str(world.conflict), "link", *store), "is a conflict"),
            (("--temporal", "127.0.0.1:1", "wake", world.a), "Temporal is not reachable at 127.0.0.1:1"),
            (("--temporal", "no.such.host.invalid:7233", "state", world.a), "not reachable"),
            (("--temporal", "127.0.0.1:99999", "state", world.a), "is not a Temporal address"),
            (("--temporal", f"127.0.0.1:{busy_port}", "worker"), "CONCORD_VAULT_KEYS is not set"),
            (("api", "--port", busy_port, *store), f"port {busy_port} on 127.0.0.1 is already in use"),
        ]
        results = [await concord(*argv, cwd=tmp_path) for argv, _ in cases]
    for (argv, expected), res in zip(cases, results):
        where = f"concord {' '.join(argv)}"
        assert res.returncode != 0, where
        assert "Traceback" not in res.stderr, where
        assert res.stderr.count("\n") == 1 and res.stderr.endswith("\n"), f"{where}: {res.stderr!r}"
        assert expected in res.stderr, f"{where}: {res.stderr!r}"
        assert res.stderr.startswith("concord"), f"{where}: {res.stderr!r}"
    assert not (tmp_path / "missing.db").exists(), "a read never creates a store"


async def test_reviews_and_quarantine_of_a_known_connection(world, tmp_path):
    res = await concord("reviews", world.a, "--store-url", world.store_url, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    import json

    assert [r["review_id"] for r in json.loads(res.stdout)] == [world.conflict, world.duplicate]
    res = await concord("quarantine", world.b, cwd=tmp_path, CONCORD_STORE_URL=world.store_url)
    assert (res.returncode, json.loads(res.stdout)) == (0, [])


# --- a clean exit, every time ------------------------------------------------------------------


async def test_forty_calls_in_a_row_all_exit_cleanly(temporal_env, tmp_path):
    """The temporalio bridge could abort a finished command at interpreter exit
    (rc 134, `PyGILState_Release`) about one call in ten."""
    store_url, crm_url = f"sqlite:///{tmp_path / 'store.db'}", f"sqlite:///{tmp_path / 'crm.db'}"
    target = _target(temporal_env)
    async with rig(temporal_env, store_url, crm_url, n_mailbox=6, n_crm=4, near_duplicates=1) as r:
        await r.start()
        results = [await concord("--temporal", target, "state" if i % 2 else "wake", r.cid, cwd=tmp_path)
                   for i in range(40)]
    failed = [(res.args[2], res.returncode, res.stderr.strip()[:120]) for res in results if res.returncode != 0]
    assert failed == []
    assert all('"connection_id"' in res.stdout for res in results[1::2])


async def test_worker_refuses_to_start_without_vault_keys(temporal_env, tmp_path):
    """Before: a throwaway key, then every cycle failed with VaultKeyMissing while health said active."""
    res = await concord("--temporal", _target(temporal_env), "worker", cwd=tmp_path, timeout=30,
                        CONCORD_STORE_URL=f"sqlite:///{tmp_path / 'store.db'}")
    assert res.returncode == 1
    assert res.stderr.startswith("concord worker: CONCORD_VAULT_KEYS is not set") and res.stderr.count("\n") == 1
    assert not (tmp_path / "store.db").exists(), "it refuses before touching anything"


def test_build_activities_has_no_fallback_key(tmp_path, monkeypatch):
    from store.vault import VaultConfigError
    from workers.worker import build_activities

    monkeypatch.delenv("CONCORD_VAULT_KEYS", raising=False)
    with pytest.raises(VaultConfigError, match="CONCORD_VAULT_KEYS is not set"):
        build_activities(f"sqlite:///{tmp_path / 'store.db'}", f"sqlite:///{tmp_path / 'crm.db'}")


# --- help ----------------------------------------------------------------------------------------


def test_every_subcommand_and_argument_is_described():
    parser = _parser()
    (commands,) = [a for a in parser._actions if a.dest == "cmd"]
    described = {c.dest for c in commands._choices_actions if c.help}
    assert described == set(commands.choices), set(commands.choices) - described
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"concord {name}: {action.dest} has no help"
    assert {"--port", "--ui-port", "--db"} <= set(commands.choices["dev-server"]._option_string_actions)
