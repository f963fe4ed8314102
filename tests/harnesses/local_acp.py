"""The local backend with a REAL coding-agent CLI attached: the ``claude`` preset (Claude Code through
claude-agent-acp, installed by scripts/setup-clis.sh) over ACP, against the mock model, which
answers every prompt ``echo: <text>``. ``slow()`` makes the mock hold its answers back.

The CLI's HOME, keys and base URL are the server's environment (as for any preset), so the harness
sets them in ``os.environ`` for its lifetime and puts them back afterwards.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from mcp import Client

from sessions_mcp.settings import Settings, load_settings

from ..clis import CliHome
from ..mockllm import MockLLM, Say, Turn

REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)


class LocalAcpHarness:
    name = "local"
    auto_reply = True

    def __init__(self, home: CliHome) -> None:
        self.home = home
        self.slow_s = 0.0

    def echo(self, turn: Turn) -> Say:
        users = [i.text for i in turn.items if i.kind == "user"]
        text = REMINDER.sub("", users[-1] if users else "").strip()
        return Say(f"echo: {text}", delay_s=self.slow_s)

    def settings(self, tmp_path: Path) -> Settings:
        return load_settings(
            None,
            local={"db": str(tmp_path / "contract.db"), "agent": "claude", "agent_roots": [str(self.home.work)],
                   "agent_timeout_s": 60},
            agents={"claude": {"cwd": str(self.home.work)}},
        )  # fmt: skip

    async def reply(self, client: Client, session_id: str, text: str) -> None:
        return None  # the agent answers by itself

    @asynccontextmanager
    async def slow(self) -> AsyncIterator[Any]:
        self.slow_s = 30.0
        try:
            yield None
        finally:
            self.slow_s = 0.0


@asynccontextmanager
async def HARNESS() -> AsyncIterator[LocalAcpHarness]:
    holder: list[LocalAcpHarness] = []
    with tempfile.TemporaryDirectory(prefix="sessions-mcp-acp-") as tmp, MockLLM([lambda t: holder[0].echo(t)]) as mock:
        home = CliHome.create("claude", Path(tmp) / "home", mock.url)
        saved = {k: os.environ.get(k) for k in home.env}
        os.environ.update(home.env)
        try:
            holder.append(LocalAcpHarness(home))
            yield holder[0]
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
