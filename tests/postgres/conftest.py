"""Fixtures for the PostgreSQL tests: a fresh schema per test on the test session's database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from sessions_mcp.settings import Settings, load_settings
from sessions_mcp.store.postgres import PostgresStore

from .. import pg


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is an empty schema of its own."""
    url = pg.new_schema_url()
    try:
        yield url
    finally:
        pg.drop_schema_url(url)


@pytest.fixture
def pg_settings(pg_url: str) -> Callable[..., Settings]:
    """Settings for a server on the test's PostgreSQL schema."""

    def make(**overrides: Any) -> Settings:
        local = overrides.pop("local", {})
        local.setdefault("db", pg_url)
        return load_settings(None, local=local, **overrides)

    return make


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[Callable[[], Any]]:
    """Open any number of independent stores (one per simulated replica); all closed afterwards."""
    async with AsyncExitStack() as stack:
        opened: list[PostgresStore] = []

        async def open_one() -> PostgresStore:
            store = PostgresStore(pg_url)
            await store.open()
            opened.append(store)
            return store

        async def close_all() -> None:
            for s in opened:
                await s.close()

        stack.push_async_callback(close_all)
        yield open_one


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything here needs PostgreSQL (``-m "not postgres"`` leaves it out)."""
    here = str(__file__).rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.postgres)
