"""The A2A backend with its sessions in the PostgreSQL store (a fresh schema per test; tests/pg.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread

from sessions_mcp.settings import Settings, load_settings

from .. import pg
from ..emulators.a2a_agents import A2AAgent, serving
from .a2a import A2AHarness


class A2APostgresHarness(A2AHarness):
    """Same semantics as :class:`A2AHarness`; the sessions and transcripts live in PostgreSQL."""

    def __init__(self, agent: A2AAgent, url: str) -> None:
        super().__init__(agent)
        self.url = url

    def settings(self, tmp_path: Path) -> Settings:
        return load_settings(
            None,
            backends=["a2a"],
            local={"db": self.url},
            a2a={"agents": f"helper={self.emulator.url}", "timeout_s": 10},
        )


@asynccontextmanager
async def HARNESS() -> AsyncIterator[A2APostgresHarness]:
    url = await anyio.to_thread.run_sync(pg.new_schema_url)
    try:
        with serving() as agent:
            agent.behaviour.released.set()
            yield A2APostgresHarness(agent, url)
    finally:
        await anyio.to_thread.run_sync(pg.drop_schema_url, url)
