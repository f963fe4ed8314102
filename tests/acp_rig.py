"""A real ACP coding agent (scripts/setup-clis.sh) in a fresh HOME against the mock model, for tests.

``rig_for(preset, tmp_path, monkeypatch, make_settings)`` starts :class:`~tests.mockllm.MockLLM`
with the :func:`~tests.acp_script.scenario`, writes the CLI's configuration
(:meth:`~tests.clis.CliHome.create`), sets its environment for the test and, when the block ends,
asserts that no agent process outlived it. ``rig.settings()`` are sessions-mcp settings with the
preset as a named ACP agent whose root is the CLI's work directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings

from .acp_script import scenario
from .clis import CliHome
from .conftest import client_for
from .mockllm import MockLLM

# preset -> (CliHome flavour, extra agent settings)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "gemini": ("gemini", {"model": "gemini-2.5-flash"}),
    "qwen": ("qwen", {}),
    "opencode": ("opencode", {}),
    "copilot": ("copilot", {}),
    "droid": ("droid", {"model": "custom:Mock-0"}),
    "claude": ("claude", {}),
    "codex": ("codex", {}),
}
EXTRA_ENV: dict[str, dict[str, str]] = {
    "droid": {"FACTORY_API_KEY": "fk-mock-key"},  # any value: droid's ACP mode refuses to start without one
}


@dataclass
class Rig:
    """One preset's CLI home, the mock model it talks to, and settings that name it."""

    preset: str
    home: CliHome
    mock: MockLLM
    make: Callable[..., Settings]

    def settings(self, permissions: str = "ask", input_timeout_s: float = 120) -> Settings:
        """Settings with this preset as an ACP agent allowed to work in ``home.work``."""
        agents = {self.preset: {"kind": "acp", "permissions": permissions, **PRESETS[self.preset][1]}}
        local = {"agent_roots": [str(self.home.work)], "input_timeout_s": input_timeout_s}
        return self.make(local=local, agents=agents)

    @asynccontextmanager
    async def client(self, permissions: str = "ask") -> AsyncIterator[Client]:
        """An in-process server with :meth:`settings` and a client of it."""
        async with client_for(build_server(self.settings(permissions)), "auto") as c:
            yield c


@contextmanager
def rig_for(
    preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings]
) -> Iterator[Rig]:
    """The rig for ``preset`` for the block; fails if an agent process is still running at its end."""
    with MockLLM(scenario(), log_path=tmp_path / "mock.jsonl") as mock:
        home = CliHome.create(PRESETS[preset][0], tmp_path / "home", mock.url, EXTRA_ENV.get(preset))
        for key, value in home.env.items():
            monkeypatch.setenv(key, value)
        yield Rig(preset, home, mock, make_settings)
        assert not home.leftover_pids(), "an agent process outlived the server"
