"""The local mailbox: replies come from another client's send_message(role='assistant')."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client

from sessions_mcp.settings import Settings, load_settings


class LocalHarness:
    name = "local"
    auto_reply = False

    def settings(self, tmp_path: Path) -> Settings:
        return load_settings(None, local={"db": str(tmp_path / "contract.db")})

    async def reply(self, client: Client, session_id: str, text: str) -> None:
        r = await client.call_tool(
            "send_message", {"session_id": session_id, "text": f"echo: {text}", "role": "assistant"}
        )
        assert not r.is_error, r.content

    @asynccontextmanager
    async def slow(self) -> AsyncIterator[Any]:
        yield None  # nobody answers the mailbox unless asked


@asynccontextmanager
async def HARNESS() -> AsyncIterator[LocalHarness]:
    yield LocalHarness()
