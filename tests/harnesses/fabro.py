"""The Fabro backend against the emulator (real HTTP on 127.0.0.1, EdDSA JWT auth, live SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client

from sessions_mcp.settings import Settings, load_settings

from ..emulators.fabro import FabroEmulator, new_keypair, running


class FabroHarness:
    name = "fabro"
    auto_reply = True

    def __init__(self, emulator: FabroEmulator, private_pem: str) -> None:
        self.emulator = emulator
        self.private_pem = private_pem

    def settings(self, tmp_path: Path) -> Settings:
        return load_settings(
            None,
            backends=["fabro"],
            local={"db": str(tmp_path / "contract.db")},
            fabro={
                "base_url": self.emulator.url,
                "jwt_private_key": self.private_pem,
                "jwt_subject": "https://github.com/contract-tester",
                "timeout_s": 10,
            },
        )

    async def reply(self, client: Client, session_id: str, text: str) -> None:
        return None  # the emulator's agent answers by itself

    @asynccontextmanager
    async def slow(self) -> AsyncIterator[Any]:
        self.emulator.hold_agent()
        try:
            yield None
        finally:
            self.emulator.release_agent()


@asynccontextmanager
async def HARNESS() -> AsyncIterator[FabroHarness]:
    pem, public = new_keypair()
    with running(public, ("contract-tester",)) as emulator:
        yield FabroHarness(emulator, pem)
