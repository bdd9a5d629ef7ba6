"""`concord`: operate mailboxes from a shell (the same calls the client API makes).

    concord worker                      run a sync worker
    concord start CONN ORG PROVIDER     start (or wake) a mailbox's workflow
    concord wake CONN                   wake it now
    concord state CONN                  print its live sync state (JSON)
    concord resolve CONN REVIEW CHOICE  answer a review (mailbox|platform|link|create|ignore)
    concord pause|resume|retry|approve-deletes CONN
    concord dev-server                  run the Temporal dev server (UI on :8233)
    concord api [--port 8080]           run the HTTP app: webhooks and OAuth connect (needs CONCORD_VAULT_KEYS)
    concord disconnect CONN             stop syncing a mailbox, revoke its tokens, keep what was synced
    concord quarantine|reviews CONN     what waits for a person, with messages and values (from the store)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from workers import client as api
from workers.temporal_client import connect


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="concord", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--temporal", default=os.environ.get("CONCORD_TEMPORAL", "127.0.0.1:7233"))
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("worker")
    sub.add_parser("dev-server")
    a = sub.add_parser("api")
    a.add_argument("--host", default="127.0.0.1")
    a.add_argument("--port", type=int, default=8080)
    s = sub.add_parser("start")
    s.add_argument("connection_id")
    s.add_argument("org_id")
    s.add_argument("provider", choices=["google", "microsoft"])
    s.add_argument("--poll", type=float, default=300.0)
    for name in ("wake", "state", "pause", "resume", "retry", "approve-deletes", "disconnect"):
        sub.add_parser(name).add_argument("connection_id")
    for name in ("quarantine", "reviews"):
        q = sub.add_parser(name)
        q.add_argument("connection_id")
        q.add_argument("--store-url", default=os.environ.get("CONCORD_STORE_URL", "sqlite:///.concord/store.db"))
    r = sub.add_parser("resolve")
    r.add_argument("connection_id")
    r.add_argument("review_id", type=int)
    r.add_argument("choice", choices=["mailbox", "platform", "link", "create", "ignore"])
    return p


async def _run(args) -> int:
    client = await connect(args.temporal)
    cid = getattr(args, "connection_id", None)
    if args.cmd == "start":
        await api.start_sync(client, cid, args.org_id, args.provider, poll_interval_s=args.poll)
    elif args.cmd == "wake":
        await api.wake(client, cid, "cli")
    elif args.cmd == "state":
        print((await api.state(client, cid)).model_dump_json(indent=2))
    elif args.cmd == "resolve":
        # Choices that carry no values need no store access; "merged" goes through the API.
        await api.resolve(client, None, cid, args.review_id, args.choice)
    elif args.cmd == "pause":
        await api.pause(client, cid)
    elif args.cmd == "resume":
        await api.resume(client, cid)
    elif args.cmd == "retry":
        await api.retry_quarantined(client, cid)
    elif args.cmd == "approve-deletes":
        await api.approve_mass_delete(client, cid)
    elif args.cmd == "disconnect":
        await api.disconnect(client, cid)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.cmd == "worker":
        from workers.worker import main as worker_main

        worker_main(["--temporal", args.temporal])
        return
    if args.cmd in ("quarantine", "reviews"):
        import json

        from store.db import make_engine, session_factory

        sessions = session_factory(make_engine(args.store_url))
        rows = (api.quarantined if args.cmd == "quarantine" else api.open_reviews)(sessions, args.connection_id)
        print(json.dumps(rows, indent=2, default=str))
        return
    if args.cmd == "api":
        import uvicorn

        uvicorn.run("api.app:production_app", factory=True, host=args.host, port=args.port)
        return
    if args.cmd == "dev-server":
        from workers.devstack import main as dev_main

        sys.exit(dev_main([]))
    sys.exit(asyncio.run(_run(args)))


if __name__ == "__main__":
    main()
