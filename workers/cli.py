"""`concord`: operate mailboxes from a shell (the same calls the client API makes).

    concord worker                      run a sync worker
    concord start CONN ORG PROVIDER     start (or wake) the workflow of a stored connection
    concord wake CONN                   wake it now
    concord state CONN                  print its live sync state (JSON)
    concord status CONN [--json]        its sync health: completion rate, error rates, recovery, cycle time
    concord resolve CONN REVIEW CHOICE  answer an open review: a conflict takes mailbox|platform,
                                        a duplicate link|create|ignore, an association attach|ignore
    concord pause|resume|retry|approve-deletes CONN
    concord dev-server [--port 7233]    run the Temporal dev server (UI on port + 1000)
    concord api [--port 8080]           run the HTTP app: webhooks and OAuth connect (needs CONCORD_VAULT_KEYS)
    concord disconnect CONN             stop syncing a mailbox, revoke its tokens, keep what was synced
    concord quarantine|reviews CONN     what waits for a person, with messages and values (from the store)
    concord setup                       prepare a deployment (databases, migrations, CRM tables, search
                                        attributes), idempotently; waits for Temporal and the databases
    concord health [--http URL]         exit 0 when Temporal and the store answer (a container healthcheck)
    concord reconcile CONN [--json]     compare both ends now (through the worker); print the stored report
    concord export (--connection CONN | --org ORG) --format csv|json [--out FILE]
    concord erase --org ORG --email ADDRESS [--mailbox-policy keep|delete]

A wrong argument, an unreachable server, an unknown connection or review, or a
workflow with no worker gives one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

import settings
from connectors import registry
from workers import client as api
from workers.devstack import add_server_arguments
from workers.temporal_client import TASK_QUEUE

DEFAULT_STORE_URL = "sqlite:///.concord/store.db"
DEFAULT_CRM_URL = "sqlite:///.concord/crm.db"
PROVIDERS = registry.names()
#: What `concord resolve` offers; "merged" carries field values, so it goes through the API.
CLI_CHOICES = tuple(dict.fromkeys(c for kind in api.CHOICES.values() for c in kind if c != "merged"))
#: Signal commands: what each does (its help) and the client API call it makes.
SIGNALS = {
    "wake": ("wake it now: a sync cycle starts at once", lambda c, cid: api.wake(c, cid, "cli")),
    "pause": ("stop syncing until `resume` (wake-ups and the poll timer wait meanwhile)", api.pause),
    "resume": ("sync again after `pause`", api.resume),
    "retry": ("retry the quarantined items on the next cycle", api.retry_quarantined),
    "approve-deletes": ("let deletions held by the mass-delete guard go through", api.approve_mass_delete),
    "disconnect": ("stop syncing, stop subscriptions, revoke tokens; what was synced stays", api.disconnect),
}


def default_temporal() -> str:
    return settings.load().temporal


def default_store_url() -> str:
    return settings.load().store_url


class CliError(Exception):
    """Something the user can fix, said in one line."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


#: the kinds a mailbox can sync
SYNCABLE_KINDS = ("contacts", "mail", "send", "calendar")


def _kinds(value: str) -> list[str]:
    """`contacts,mail` -> ["contacts", "mail"]; an unknown kind is refused by argparse."""
    kinds = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in SYNCABLE_KINDS]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(f"unknown kind {', '.join(unknown) or repr(value)} "
                                         f"(known: {', '.join(SYNCABLE_KINDS)})")
    return kinds


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="concord", description="Operate mailboxes from a shell (the same calls the client API makes).",
                epilog="A wrong argument, an unreachable server, an unknown connection or review, or a workflow "
                       "no worker answers for gives one line on stderr and a non-zero exit. "
                       "`concord COMMAND --help` describes a command's arguments.")
    p.add_argument("--temporal", default=default_temporal(), metavar="HOST:PORT",
                   help="Temporal frontend (default: $CONCORD_TEMPORAL or %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help)

    def connection(q: argparse.ArgumentParser) -> None:
        q.add_argument("connection_id", metavar="CONN", help="the connection id (the workflow is mailbox-sync/CONN)")

    def store(q: argparse.ArgumentParser) -> None:
        q.add_argument("--store-url", default=default_store_url(), metavar="URL",
                       help="the Concord store (default: $CONCORD_STORE_URL or %(default)s)")

    command("worker", "run a sync worker on task queue " + TASK_QUEUE + " (needs $CONCORD_VAULT_KEYS)")
    add_server_arguments(command("dev-server", "run the local Temporal dev server in the foreground until Ctrl-C"))
    a = command("api", "run the HTTP app: webhooks, and the OAuth connect flow when configured")
    a.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    a.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    store(a)
    s = command("start", "start (or wake) the workflow of a connection the store holds")
    connection(s)
    s.add_argument("org_id", metavar="ORG", help="the organisation the connection belongs to")
    s.add_argument("provider", choices=PROVIDERS, metavar="PROVIDER", help=" or ".join(PROVIDERS))
    s.add_argument("--poll", type=float, default=300.0, metavar="SECONDS",
                   help="poll interval, the safety net beside webhooks (default: %(default)s)")
    s.add_argument("--kinds", type=_kinds, default=None, metavar="KIND[,KIND]",
                   help=f"what the mailbox syncs, of {', '.join(SYNCABLE_KINDS)} (default: contacts)")
    store(s)
    for name, (what, _call) in SIGNALS.items():
        connection(command(name, what))
    connection(command("state", "print the live sync state (JSON): health, counts, open reviews, quarantine"))
    h = command("status", "sync health: cycle completion rate, error rates by code, consistency, recovery "
                          "time, cycle duration and its trend")
    connection(h)
    h.add_argument("--json", action="store_true", help="print the raw figures (JSON)")
    for name, what in (("org-state", "print the organisation's live state (JSON): platform reads, changes, "
                                     "mailboxes woken, per kind"),
                       ("org-wake", "read the platform now for the organisation (what its webhook does)")):
        command(name, what).add_argument("org_id", metavar="ORG",
                                         help="the organisation (its workflow is org-sync/ORG)")
    q = command("quarantine", "quarantined items with their error messages (JSON, from the store)")
    connection(q)
    store(q)
    r = command("reviews", "open conflict and duplicate reviews with the values to choose between (JSON)")
    connection(r)
    store(r)
    r = command("resolve", "answer an open review: a conflict takes mailbox|platform, a duplicate "
                           "link|create|ignore, a logged message's association attach|ignore")
    connection(r)
    r.add_argument("review_id", type=int, metavar="REVIEW", help="the review id (see `concord reviews CONN`)")
    r.add_argument("choice", choices=CLI_CHOICES, metavar="CHOICE",
                   help="conflict: mailbox or platform (whose values win); duplicate: link (same person), "
                        "create (a different person) or ignore (do not sync it); association: attach "
                        "(every record the review lists) or ignore (none). Merged values: "
                        "workers.client.resolve(..., 'merged', fields)")
    store(r)
    su = command("setup", "prepare a deployment, idempotently: wait for Temporal and the databases, create "
                          "the store's and the CRM's databases if missing, migrate the store, create the CRM "
                          "tables, register the Concord search attributes")
    store(su)
    su.add_argument("--crm-url", default=settings.load().crm_url, metavar="URL",
                    help="the reference CRM's database (default: $CONCORD_CRM_URL or %(default)s)")
    su.add_argument("--namespace", default=settings.load().temporal_namespace,
                    help="the Temporal namespace (default: $CONCORD_TEMPORAL_NAMESPACE or %(default)s)")
    su.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                    help="how long to wait for Temporal and the databases (default: %(default)s)")
    h = command("health", "exit 0 when Temporal serves the namespace and the store answers, else one line "
                          "and exit 1 (a container healthcheck)")
    store(h)
    h.add_argument("--namespace", default=settings.load().temporal_namespace,
                   help="the Temporal namespace (default: $CONCORD_TEMPORAL_NAMESPACE or %(default)s)")
    h.add_argument("--http", action="append", metavar="URL", help="also require 200 from this URL (repeatable)")
    h.add_argument("--timeout", type=float, default=3.0, metavar="SECONDS", help="per check (default: %(default)s)")
    _add_data_commands(command, connection, store)
    return p


def _add_data_commands(command, connection, store) -> None:
    """reconcile, export, erase (see workers/data_commands.py)."""
    from workers import data_commands

    data_commands.add_arguments(command, connection, store)


# --- the pieces commands share -------------------------------------------------------

async def _client(target: str) -> Client:
    try:
        return await api.connect_checked(target)
    except api.TemporalUnreachable as exc:
        raise CliError(f"{exc} (--temporal HOST:PORT or $CONCORD_TEMPORAL names it; "
                       "`concord dev-server` runs one here)") from None


def _store(url: str):
    """Sessions on an existing store. Reading commands never create one: a typo in the
    path should not leave an empty database behind and answer "nothing waits"."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from store.db import make_engine, session_factory

    try:
        u = make_url(url)
    except ArgumentError:
        raise CliError(f"bad --store-url {url!r} (e.g. {DEFAULT_STORE_URL} or postgresql+psycopg://...)") from None
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:" \
            and not Path(u.database).expanduser().is_file():
        raise CliError(f"no store at {u.database} (pass --store-url or set CONCORD_STORE_URL)")
    return session_factory(make_engine(u))


def _connection(sessions, connection_id: str, url: str):
    from store import repo

    with sessions() as s:
        row = repo.get_connection(s, connection_id)
    if row is None:
        raise CliError(f"no connection {connection_id} in the store at {_safe(url)}")
    return row


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


async def _explain(client: Client, connection_id: str, exc: RPCError) -> str:
    """One line saying why a signal or query to this connection's workflow failed."""
    try:
        desc = await api.handle(client, connection_id).describe()
    except RPCError as again:
        if again.status == RPCStatusCode.NOT_FOUND:
            return (f"no workflow for connection {connection_id} "
                    f"(start it with `concord start {connection_id} ORG PROVIDER`)")
        return _refused(connection_id, again)
    if desc.status != WorkflowExecutionStatus.RUNNING and exc.status == RPCStatusCode.NOT_FOUND:
        name = desc.status.name.lower() if desc.status else "closed"
        return (f"the workflow for connection {connection_id} has ended ({name}); "
                f"`concord start {connection_id} ORG PROVIDER` starts it again")
    if exc.status in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
        timeout = api.QUERY_TIMEOUT.total_seconds()
        if not await _has_pollers(client, desc.task_queue):
            return (f"no worker is polling task queue {desc.task_queue} to answer for connection "
                    f"{connection_id} (start one with `concord worker`)")
        return f"the worker on task queue {desc.task_queue} did not answer within {timeout:.0f}s; is it overloaded?"
    return _refused(connection_id, exc)


def _refused(connection_id: str, exc: RPCError) -> str:
    status = exc.status.name if exc.status else "error"
    return f"Temporal refused the call for connection {connection_id}: {status} {exc.message}"


async def _has_pollers(client: Client, task_queue: str) -> bool:
    resp = await client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW))
    return bool(resp.pollers)


# --- commands ------------------------------------------------------------------------

async def _org_command(args) -> None:
    from workflows.org_sync import workflow_id as org_workflow_id

    client = await _client(args.temporal)
    try:
        if args.cmd == "org-state":
            print((await api.org_state(client, args.org_id)).model_dump_json(indent=2))
        else:
            await api.wake_org(client, args.org_id, "cli")
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no workflow for organisation {args.org_id} ({org_workflow_id(args.org_id)} starts "
                           "with its first mailbox: `concord start CONN ORG PROVIDER`)") from None
        if exc.status in (RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED):
            raise CliError(f"no worker answered for organisation {args.org_id} within "
                           f"{api.QUERY_TIMEOUT.total_seconds():.0f}s (is `concord worker` running?)") from None
        raise CliError(f"Temporal refused the call for organisation {args.org_id}: "
                       f"{exc.status.name if exc.status else 'error'} {exc.message}") from None


async def _workflow_command(args) -> None:
    client = await _client(args.temporal)
    cid = args.connection_id
    try:
        if args.cmd == "start":
            await api.start_sync(client, cid, args.org_id, args.provider, poll_interval_s=args.poll, kinds=args.kinds)
        elif args.cmd == "state":
            print((await api.state(client, cid)).model_dump_json(indent=2))
        elif args.cmd == "status":
            from workers.status import status_text

            print(status_text(await api.state(client, cid), args.json))
        elif args.cmd == "resolve":
            await api.resolve(client, args.sessions, cid, args.review_id, args.choice)
        else:
            await SIGNALS[args.cmd][1](client, cid)
    except RPCError as exc:
        raise CliError(await _explain(client, cid, exc)) from None


def _start_checks(args) -> None:
    """`start` only for a connection the store holds, with the org and provider it has."""
    row = _connection(args.sessions, args.connection_id, args.store_url)
    if (row.org_id, row.provider) != (args.org_id, args.provider):
        raise CliError(f"connection {args.connection_id} is a {row.provider} connection of {row.org_id}, "
                       f"not a {args.provider} connection of {args.org_id}")


def _run_api(args) -> None:
    import uvicorn

    from workers.ports import port_is_free

    if not port_is_free(args.port, args.host):
        raise CliError(f"port {args.port} on {args.host} is already in use (pass --port)")
    # The app factory reads its configuration from the environment, like a deployment.
    os.environ["CONCORD_STORE_URL"] = args.store_url
    os.environ["CONCORD_TEMPORAL"] = args.temporal
    uvicorn.run("api.app:production_app", factory=True, host=args.host, port=args.port)


def _deploy_command(args) -> int:
    from workers import deploy

    if args.cmd == "setup":
        try:
            deploy.setup(store_url=args.store_url, crm_url=args.crm_url, temporal=args.temporal,
                         namespace=args.namespace, wait_s=args.wait, say=lambda m: print(m, flush=True))
        except deploy.NotReady as exc:
            raise CliError(str(exc)) from None
        return 0
    problems = deploy.health(temporal=args.temporal, store_url=args.store_url, namespace=args.namespace,
                             http=args.http, timeout=args.timeout)
    if problems:
        raise CliError("; ".join(problems))
    print("ok")
    return 0


def _dispatch(args) -> int:
    if args.cmd == "worker":
        from workers.worker import main as worker_main

        worker_main(["--temporal", args.temporal])
        return 0
    if args.cmd == "dev-server":
        from workers.devstack import serve_foreground

        return serve_foreground(args)
    if args.cmd == "api":
        _run_api(args)
        return 0
    if args.cmd in ("org-state", "org-wake"):
        asyncio.run(_org_command(args))
        return 0
    if args.cmd in ("setup", "health"):
        return _deploy_command(args)
    if hasattr(args, "store_url"):
        args.sessions = _store(args.store_url)
    if args.cmd in ("reconcile", "export", "erase"):
        from workers import data_commands

        return data_commands.dispatch(args)
    if args.cmd in ("quarantine", "reviews"):
        read = api.quarantined if args.cmd == "quarantine" else api.open_reviews
        print(json.dumps(read(args.sessions, args.connection_id), indent=2, default=str))
        return 0
    if args.cmd == "start":
        _start_checks(args)
    if args.cmd == "resolve":  # the store's answer comes first: it is the likelier mistake
        try:
            api.check_resolution(args.sessions, args.connection_id, args.review_id, args.choice)
        except api.InvalidResolution as exc:
            raise CliError(str(exc)) from None
    asyncio.run(_workflow_command(args))
    return 0


def run(argv: list[str] | None = None) -> int:
    """The command's exit code; every expected failure is one line on stderr."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a one-line usage error
        return exc.code if isinstance(exc.code, int) else 2
    except settings.SettingsError as exc:  # a setting of the wrong type
        print(f"concord: {exc}", file=sys.stderr)
        return 2
    prog = f"concord {args.cmd}"
    try:
        return _dispatch(args)
    except (CliError, api.InvalidResolution) as exc:
        message = str(exc)
    except api.UnknownConnection as exc:
        message = f"{exc} at {_safe(args.store_url)}"
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or type(exc).__name__).splitlines()[0][:200]
        message = f"cannot read the store at {_safe(getattr(args, 'store_url', ''))}: {reason}"
    except SystemExit as exc:  # a sub-program's own one-line refusal (the worker's missing key)
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        message = str(exc.code)
    except KeyboardInterrupt:
        return 130
    print(f"{prog}: {' '.join(str(message).split())}", file=sys.stderr)
    return 1


def exit_process(code: int) -> NoReturn:
    """Flush and leave without interpreter finalisation.

    The temporalio bridge runs Rust (Tokio) threads that may call into Python while
    the interpreter finalises; now and then that aborts a finished command with
    `Fatal Python error: PyGILState_Release` and rc 134 (temporalio/sdk-python#300,
    open). `os._exit` skips finalisation, so what needs an orderly end (spans,
    log handlers, output) is ended here first.
    """
    from opentelemetry import trace

    shutdown = getattr(trace.get_tracer_provider(), "shutdown", None)
    if shutdown is not None:
        shutdown()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`concord reviews X | head`)
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> NoReturn:
    exit_process(run(argv))


if __name__ == "__main__":
    main()
