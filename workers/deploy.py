"""`concord setup` and `concord health`: what a deployment runs once, and what probes it.

`setup` is the one-shot step before any worker or HTTP app starts (docker-compose's
`setup` service; a Kubernetes Job or init container elsewhere). Every step is
idempotent, so running it again, or from two places at once, changes nothing:

1. wait until each PostgreSQL server (store, CRM) answers, and create the store's and
   the reference CRM's databases if missing (a SQLite file is simply created);
2. migrate the store to the newest schema (`store.db.migrate`, under its advisory lock);
3. create the reference CRM's tables (`create_all`: only the missing ones);
4. wait until Temporal serves the namespace, and register Concord's search attributes
   (`ConcordOrgId`, ...) through the operator API: the same as
   `temporal operator search-attribute create --name ConcordOrgId --type Keyword`.

`health` answers "can this process do its work?": Temporal serves the namespace and the
store answers a query (and, with `--http URL`, an HTTP endpoint answers 200). It exits 0
or prints one line and exits 1: a container healthcheck.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from store.db import make_engine

#: How long one attempt to reach a server may take.
PROBE_TIMEOUT_S = 3.0


class NotReady(Exception):
    """A dependency did not answer in time (one line, said to the operator)."""


def safe_url(url: str | URL) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _pg(url: str | URL) -> URL | None:
    """The URL with the psycopg driver when it names PostgreSQL, else None."""
    u = make_url(url)
    if u.get_backend_name() != "postgresql":
        return None
    return u.set(drivername="postgresql+psycopg")


def _engine(u: URL):
    connect_args = {"connect_timeout": int(PROBE_TIMEOUT_S)} if u.get_backend_name() == "postgresql" else {}
    return make_engine(u, poolclass=sa.pool.NullPool, connect_args=connect_args)


def _until(what: str, attempt: Callable[[], object], deadline: float, say: Callable[[str], None]):
    """Call `attempt` until it returns without raising, or raise NotReady at the deadline."""
    waited = False
    while True:
        try:
            return attempt()
        except Exception as exc:  # a server still starting fails in many ways
            reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
            if time.monotonic() >= deadline:
                raise NotReady(f"{what} did not answer in time: {reason}") from None
            if not waited:
                say(f"waiting for {what} ({reason})")
                waited = True
            time.sleep(1.0)


def ensure_database(url: str | URL, *, deadline: float, say: Callable[[str], None] = print) -> bool:
    """Wait for the database's server and create the database if it is missing; True if created.

    PostgreSQL: connects to the server's `postgres` database (the same credentials) to
    look for it and CREATE DATABASE. SQLite: nothing to wait for; the file is made on use."""
    u = _pg(url)
    if u is None:
        return False
    name = u.database
    if not name:
        raise NotReady(f"{safe_url(url)} names no database")
    admin = _engine(u.set(database="postgres")).execution_options(isolation_level="AUTOCOMMIT")

    def exists() -> bool:
        with admin.connect() as conn:
            return conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is not None

    try:
        if _until(f"PostgreSQL at {u.host}:{u.port or 5432}", exists, deadline, say):
            return False
        quoted = admin.dialect.identifier_preparer.quote_identifier(name)
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
        except sa.exc.DBAPIError:
            if not exists():  # another setup created it meanwhile: fine
                raise
            return False
        return True
    finally:
        admin.dispose()


def check_database(url: str | URL) -> None:
    """Raise unless the database answers `SELECT 1` (a SQLite file must already exist)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        from pathlib import Path

        if u.database and u.database != ":memory:" and not Path(u.database).expanduser().is_file():
            raise NotReady(f"no store at {u.database}")
    engine = _engine(_pg(u) or u)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    finally:
        engine.dispose()


async def wait_temporal(target: str, namespace: str, deadline: float, say: Callable[[str], None] = print) -> None:
    from workers.devstack import probe_temporal

    waited = False
    while not await probe_temporal(target, namespace, timeout=PROBE_TIMEOUT_S):
        if time.monotonic() >= deadline:
            raise NotReady(f"Temporal at {target} did not serve namespace {namespace!r} in time")
        if not waited:
            say(f"waiting for Temporal at {target} (namespace {namespace})")
            waited = True
        await asyncio.sleep(1.0)


def setup(*, store_url: str, crm_url: str, temporal: str, namespace: str = "default", wait_s: float = 120.0,
          say: Callable[[str], None] = print) -> None:
    """Everything a deployment needs before its workers start; safe to run any number of times."""
    from platforms.reference_crm.service import ReferenceCrm
    from store.db import current_revision, migrate
    from workers.devstack import ensure_search_attributes

    deadline = time.monotonic() + wait_s
    for role, url in (("store", store_url), ("CRM", crm_url)):
        created = ensure_database(url, deadline=deadline, say=say)
        say(f"{role} database {safe_url(url)}: {'created' if created else 'present'}")
    migrate(store_url)
    say(f"store schema: at {current_revision(store_url)}")
    crm = ReferenceCrm(crm_url)  # create_all: the missing tables only
    crm.engine.dispose()
    say("CRM tables: present")

    async def temporal_steps() -> list[str]:
        await wait_temporal(temporal, namespace, deadline, say)
        return await ensure_search_attributes(temporal, namespace)

    added = asyncio.run(temporal_steps())
    say(f"search attributes on {temporal}/{namespace}: "
        + (f"registered {', '.join(added)}" if added else "already registered"))


def health(*, temporal: str, store_url: str, namespace: str = "default", http: list[str] | None = None,
           timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """What is wrong, one phrase per failed check; empty when healthy."""
    from workers.devstack import probe_temporal

    problems: list[str] = []
    if not asyncio.run(probe_temporal(temporal, namespace, timeout=timeout)):
        problems.append(f"Temporal at {temporal} does not serve namespace {namespace!r}")
    try:
        check_database(store_url)
    except Exception as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:200]
        problems.append(f"store at {safe_url(store_url)}: {reason}")
    for url in http or ():
        import httpx

        try:
            status = httpx.get(url, timeout=timeout, trust_env=False).status_code
            if status != 200:
                problems.append(f"{url} answered {status}")
        except httpx.HTTPError as exc:
            problems.append(f"{url}: {type(exc).__name__} {exc}")
    return problems
