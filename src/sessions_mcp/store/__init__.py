"""Persistence for local sessions; the implementation is chosen by ``SESSIONS_MCP_LOCAL__DB``."""

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
