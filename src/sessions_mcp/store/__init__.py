"""Persistence for local sessions; the engine is chosen by ``SESSIONS_MCP_LOCAL__DB``.

Layout, by concern: :mod:`.sessions`, :mod:`.messages`, :mod:`.idempotency`, :mod:`.changes`
(the change log), :mod:`.turns` (agent turns) and :mod:`.outbox` (web-app mirror) each hold one
class with that concern's SQL, written once; :class:`.base.Store` is their sum. The engines
:mod:`.sqlite` and :mod:`.postgres` supply connections, transactions, locking, retries, change
notification and error messages; :mod:`.dialect` is the one place where the SQL of the two
databases differs (placeholders, ``GREATEST``, ``FOR UPDATE``, the clock), and
:mod:`.migrations` holds the named schema changes, DDL written once with typed placeholders.
A new concern (e.g. durable tasks) is a new module, a base of ``Store`` and a new migration.

Why an in-house dialect layer rather than SQLAlchemy Core: the statements are few and fixed,
the differences are a handful of spellings, and the hot paths are measured (bench budgets 1,
2 and 5). Measured on this machine, ``import sqlalchemy`` costs 160-540 ms and 80 modules
(the cold-start budget has ~100 ms of room), and a compiled, cached Core ``select`` costs
~30-40 us more per point read than the raw driver call (8-16 us). Bodies are ``async`` functions
of a :class:`.dialect.Tx`; SQLite's ``Tx`` never suspends, so the same body runs to completion
in a worker thread or inline on the event loop (:func:`.dialect.run_sync`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import LocalSettings
    from .base import Store


def is_postgres_url(location: str) -> bool:
    """Whether the configured database is a PostgreSQL URL."""
    return location.startswith(("postgresql://", "postgres://"))


def create_store(local: LocalSettings) -> Store:
    """Build (but do not open) the store the settings select; drivers are imported lazily."""
    location = local.db_location()
    if is_postgres_url(location):
        from .postgres import PostgresStore

        return PostgresStore(location)
    from .sqlite import SqliteStore

    return SqliteStore(location, busy_timeout_s=local.busy_timeout_s)
