"""The A2A backend against a real ``a2a-sdk`` agent server (streaming, JSON-RPC, 127.0.0.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client

from sessions_mcp.settings import Settings, load_settings

from ..emulators.a2a_agents import A2AAgent, serving


class A2AHarness:
    name = "a2a"
    auto_reply = True

    def __init__(self, agent: A2AAgent) -> None:
        self.emulator = agent

    def settings(self, tmp_path: Path) -> Settings:
        return load_settings(
            None,
            backends=["a2a"],
            local={"db": str(tmp_path / "contract.db")},
            a2a={"agents": f"helper={self.emulator.url}", "timeout_s": 10},
        )

    async def reply(self, client: Client, session_id: str, text: str) -> None:
        return None  # the agent answers by itself

    @asynccontextmanager
    async def slow(self) -> AsyncIterator[Any]:
        b = self.emulator.behaviour
        b.released.clear()
        b.hold.set()
        try:
            yield None
        finally:
            b.hold.clear()
            b.released.set()


@asynccontextmanager
async def HARNESS() -> AsyncIterator[A2AHarness]:
    with serving() as agent:
        agent.behaviour.released.set()
        yield A2AHarness(agent)
