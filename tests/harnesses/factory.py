"""Factory Sessions API v0: the emulator served by uvicorn on 127.0.0.1; its agent echoes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client

from sessions_mcp.settings import Settings, load_settings

from ..emulators.factory import API_KEY, FactoryEmulator, Served


class FactoryHarness:
    name = "factory"
    auto_reply = True

    def __init__(self, emulator: FactoryEmulator, url: str) -> None:
        self.emulator = emulator
        self.url = url

    def settings(self, tmp_path: Path) -> Settings:
        return load_settings(
            None,
            backends=["factory"],
            local={"db": str(tmp_path / "contract.db")},
            factory={"api_key": API_KEY, "base_url": self.url, "timeout_s": 10},
        )

    async def reply(self, client: Client, session_id: str, text: str) -> None:
        return None  # the emulator's scripted agent answers by itself

    @asynccontextmanager
    async def slow(self) -> AsyncIterator[Any]:
        before = self.emulator.reply_delay_s
        self.emulator.reply_delay_s = 60.0
        try:
            yield None
        finally:
            self.emulator.reply_delay_s = before


@asynccontextmanager
async def HARNESS() -> AsyncIterator[FactoryHarness]:
    emulator = FactoryEmulator()
    with Served(emulator.app) as served:
        yield FactoryHarness(emulator, served.url)
    assert not emulator.unexpected, f"requests the emulator does not know: {emulator.unexpected}"
