"""The local mailbox on the PostgreSQL store (a fresh schema per test; see tests/pg.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread

from sessions_mcp.settings import Settings, load_settings

from .. import pg
from .local import LocalHarness


class LocalPostgresHarness(LocalHarness):
    """Same semantics as :class:`LocalHarness`; sessions live in PostgreSQL."""

    name = "local"

    def __init__(self, url: str) -> None:
        self.url = url

    def settings(self, tmp_path: Path) -> Settings:
        return load_settings(None, local={"db": self.url})


@asynccontextmanager
async def HARNESS() -> AsyncIterator[LocalPostgresHarness]:
    url = await anyio.to_thread.run_sync(pg.new_schema_url)
    try:
        yield LocalPostgresHarness(url)
    finally:
        await anyio.to_thread.run_sync(pg.drop_schema_url, url)
