"""Alembic environment: the connection or URL comes from :mod:`drimhub.store.migrate`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from drimhub.store import audit, network, security  # noqa: F401  (their tables join Base.metadata)
from drimhub.store.models import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        _run_with(conn)
    engine.dispose()


def _run_with(connection: object) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,  # type: ignore[arg-type]
                      render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run()
