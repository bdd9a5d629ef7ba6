"""Alembic environment for Concord's store.

`store.db.migrate()` hands us an open connection inside its own locked transaction;
then we neither configure logging (that would clobber the application's) nor open a
transaction of our own. The alembic CLI path builds an engine from the URL.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from store.db import default_url, make_engine
from store.schema import metadata

config = context.config


def _target_metadata():
    # The vault keeps its own MetaData (its module owns encryption); autogenerate must
    # see both or it would propose dropping vault_tokens.
    try:
        from store.vault import vault_metadata
    except ImportError:
        return [metadata]
    return [metadata, vault_metadata]


def _configure_and_run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=_target_metadata(),
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url") or default_url()
    context.configure(url=url, target_metadata=_target_metadata(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url") or default_url()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _configure_and_run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
