"""`concord reconcile`, `concord export`, `concord erase`: a person's and a connection's data.

    concord reconcile CONN [--json] [--report-only]
        compare both ends of the connection now (a one-off ReconcileWorkflow run on the
        worker), re-stage what policy allows, and print the stored report
    concord export (--connection CONN | --org ORG) --format csv|json [--out FILE]
        links with snapshots, items with status/rule/error code, and the audit log, streamed
    concord erase --org ORG --email ADDRESS [--mailbox-policy keep|delete]
        remove the person from the store and the platform; from the mailboxes only with `delete`
"""

from __future__ import annotations

import asyncio
import json
import os

import settings
import sys

from workers import client as api


def add_arguments(command, connection, store) -> None:
    r = command("reconcile", "compare both ends of a connection now and print the report (needs a worker)")
    connection(r)
    r.add_argument("--json", action="store_true", help="print the whole report as JSON (default: a summary)")
    r.add_argument("--report-only", action="store_true", help="repair nothing, only report")
    r.add_argument("--task-queue", default=None, metavar="QUEUE", help="the workers' task queue")
    store(r)
    e = command("export", "export a connection's or organisation's synced data and audit log (CSV or JSON)")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--connection", metavar="CONN", help="export this connection's data")
    which.add_argument("--org", metavar="ORG", help="export every connection of this organisation, and its audit log")
    e.add_argument("--format", choices=("csv", "json"), required=True,
                   help="json: one document with links, items, audit_log; csv: one table with a section column")
    e.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    store(e)
    x = command("erase", "erase a person (by address) from the store and the platform; the mailboxes "
                         "only with --mailbox-policy delete")
    x.add_argument("--org", required=True, metavar="ORG", help="the organisation the person is erased from")
    x.add_argument("--email", required=True, metavar="ADDRESS", help="the person's address (case does not matter)")
    x.add_argument("--mailbox-policy", choices=("keep", "delete"), default="keep",
                   help="keep (default): the users' mailboxes are not touched; delete: their contacts go too")
    x.add_argument("--crm-url", default=settings.load().crm_url,
                   metavar="URL", help="the platform (reference CRM) database (default: $CONCORD_CRM_URL)")
    store(x)


def dispatch(args) -> int:
    from workers.cli import CliError

    try:
        if args.cmd == "reconcile":
            return _reconcile(args)
        if args.cmd == "export":
            return _export(args)
        return _erase(args)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except LookupError as exc:
        if isinstance(exc, api.UnknownConnection):
            raise
        raise CliError(str(exc)) from None


def _reconcile(args) -> int:
    from temporalio.service import RPCError

    from workers.cli import CliError, _client, _connection
    from workers.temporal_client import TASK_QUEUE

    _connection(args.sessions, args.connection_id, args.store_url)

    async def go() -> dict:
        client = await _client(args.temporal)
        try:
            return await asyncio.wait_for(api.reconcile_now(client, args.sessions, args.connection_id,
                                                            repair=not args.report_only,
                                                            task_queue=args.task_queue or TASK_QUEUE), 3600)
        except RPCError as exc:
            raise CliError(f"Temporal refused the reconciliation of {args.connection_id}: {exc.message}") from None
        except asyncio.TimeoutError:
            raise CliError("the reconciliation did not finish within an hour (is `concord worker` running?)") \
                from None

    out = asyncio.run(go())
    if out["failed"]:
        print(json.dumps(out, indent=2, default=str) if args.json else "", end="")
        raise CliError(f"reconciliation of {args.connection_id} failed: "
                       + ", ".join(f"{k} {v}" for k, v in out["failed"].items()))
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        for rep in out["reports"]:
            c = rep["counts"]
            print(f"{rep['kind']}: " + ("not applicable" if not c.get("applicable", True) else
                  ", ".join(f"{k} {v}" for k, v in c.get("found", {}).items())
                  + f"; restaged {c.get('restaged', 0)} (report {rep['report_id']})"))
    return 0


def _export(args) -> int:
    chunks = api.export_chunks(args.sessions, connection_id=args.connection, org_id=args.org, fmt=args.format)
    if args.out:
        with open(args.out, "w", encoding="utf-8", newline="") as fh:
            for chunk in chunks:
                fh.write(chunk)
    else:
        for chunk in chunks:
            sys.stdout.write(chunk)
    return 0


def _erase(args) -> int:
    from activities.kinds import KINDS
    from workers.cli import CliError

    rules, adapter = KINDS["contacts"]
    platform = adapter(args.crm_url)
    builder = {}

    def mailbox_for(info):
        if "b" not in builder:
            from connectors.credentials import ProviderConfig
            from store.db import make_engine
            from store.vault import KeyRing, TokenVault, VaultConfigError
            from workers.mailboxes import MailboxBuilder

            if (info.settings or {}).get("token"):
                keyring = None
            else:
                try:
                    keyring = KeyRing.from_env()
                except VaultConfigError as exc:
                    raise CliError(f"deleting from mailboxes needs the vault key: {exc}") from None
            vault = TokenVault(make_engine(args.store_url), keyring) if keyring else None
            builder["b"] = MailboxBuilder(args.sessions, vault, ProviderConfig.from_env())
        return builder["b"](info)

    from activities.erase import EraseFailed

    try:
        result = api.erase_person(args.sessions, platform, mailbox_for, args.org, args.email,
                                  mailbox_policy=args.mailbox_policy)
    except EraseFailed as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(result.as_json(), indent=2))
    return 0
