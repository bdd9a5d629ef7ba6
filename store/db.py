"""Engines, sessions and schema upgrades for Concord's store.

SQLite is the embedded default and PostgreSQL (psycopg 3) the production store; the
URL decides. Activities run on worker threads, so SQLite connections must be usable
from any thread, wait for a writer instead of failing (busy_timeout), and use WAL so
that the workflow's state queries can read while a batch is being staged.
"""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

import settings

DEFAULT_URL = "sqlite:///.concord/store.db"
PACKAGE_DIR = Path(__file__).resolve().parent
ALEMBIC_INI = PACKAGE_DIR / "alembic.ini"
MIGRATIONS_DIR = PACKAGE_DIR / "migrations"

# Milliseconds a SQLite connection waits on another writer before giving up.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Arbitrary constant naming "Concord schema migration" among PostgreSQL advisory locks.
_PG_MIGRATION_LOCK = 0x436F6E63
# Alembic keeps its migration context in module globals: one upgrade per process at a time.
_MIGRATE_LOCK = threading.Lock()


def default_url() -> str:
    """CONCORD_STORE_URL, else the embedded SQLite store."""
    return settings.load().store_url


def _normalise(url: str | URL) -> URL:
    u = make_url(url)
    # A bare postgresql:// would pick psycopg2, which we do not ship.
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def make_engine(url: str | URL | None = None, **kwargs) -> Engine:
    """An engine tuned for the backend; extra kwargs go to `create_engine`."""
    u = _normalise(url or default_url())
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)
        engine = sa.create_engine(u, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(u, **kwargs)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # Safe with WAL against process crashes; only an OS crash may lose the last commit.
        cur.execute("PRAGMA synchronous=NORMAL")
        # A first sync writes hundreds of thousands of blocking keys, spread over their
        # indexes: checkpointing the log every 1,000 pages (the default) rewrote the
        # same index pages again and again, half the cost of inserting them. Checkpoint
        # every 10,000 pages (~40 MB of log), keep 32 MB of pages cached per connection,
        # and cut the log file back to 64 MB after a checkpoint.
        cur.execute("PRAGMA wal_autocheckpoint=10000")
        cur.execute("PRAGMA cache_size=-32768")
        cur.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
    finally:
        cur.close()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    # Rows outlive the commit so activities can return what they just wrote.
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str | URL | None = None):
    """Alembic config found inside the package, so it works from any cwd or an install."""
    from alembic.config import Config

    cfg = Config(str(ALEMBIC_INI))
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        # Escaped because the ini parser interpolates '%' (URL-encoded passwords).
        cfg.set_main_option("sqlalchemy.url", _normalise(url).render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(url: str | URL | None = None, revision: str = "head") -> None:
    """Upgrade the store to `revision`; safe to run from several processes at once.

    The whole upgrade runs in one transaction that first takes a lock (an advisory
    lock on PostgreSQL, the write lock on SQLite), so a second worker process waits
    and then finds nothing to do instead of dying on CREATE TABLE; on SQLite a failed
    upgrade also rolls back whole instead of leaving half the tables behind.
    """
    from alembic import command

    url = url or default_url()
    cfg = alembic_config(url)
    engine = make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with _MIGRATE_LOCK, engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # pysqlite leaves DDL outside transactions unless we open one ourselves.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
            conn.commit()
    finally:
        engine.dispose()


def current_revision(url: str | URL | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url or default_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
