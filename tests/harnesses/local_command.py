"""The local backend with a command agent: a tiny script answers every user turn ``echo: <text>``.

``slow()`` makes the script wait (for a flag file to go away) before it answers.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client

from sessions_mcp.settings import Settings, load_settings

SCRIPT = """\
import os, sys, time
flag = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slow")
deadline = time.monotonic() + 30
while os.path.exists(flag) and time.monotonic() < deadline:
    time.sleep(0.05)
sys.stdout.write("echo: " + sys.argv[-1])
"""


class LocalCommandHarness:
    name = "local"
    auto_reply = True

    def __init__(self) -> None:
        self.folder: Path | None = None

    def settings(self, tmp_path: Path) -> Settings:
        self.folder = tmp_path / "echo-agent"
        self.folder.mkdir(exist_ok=True)
        script = self.folder / "echo_agent.py"
        script.write_text(SCRIPT)
        return load_settings(
            None,
            local={
                "db": str(tmp_path / "contract.db"),
                "agent": "command",
                "agent_command": shlex.join([sys.executable, "-S", str(script)]),
                "agent_input": "none",
                "agent_timeout_s": 60,
            },
        )

    async def reply(self, client: Client, session_id: str, text: str) -> None:
        return None  # the agent answers by itself

    @asynccontextmanager
    async def slow(self) -> AsyncIterator[Any]:
        assert self.folder is not None, "settings() first"
        flag = self.folder / "slow"
        flag.touch()
        try:
            yield None
        finally:
            flag.unlink(missing_ok=True)


@asynccontextmanager
async def HARNESS() -> AsyncIterator[LocalCommandHarness]:
    yield LocalCommandHarness()
