"""Backend harnesses for the contract suite.

Each module here defines ``HARNESS``: a factory of :class:`Harness` for one backend. The
contract suite runs every test against every harness, so a new backend gets the whole suite
by adding one module (with its emulator) here.
"""

from __future__ import annotations

import importlib
import pkgutil
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from mcp import Client

from sessions_mcp.settings import Settings


class Harness(Protocol):
    """What the contract suite needs from a backend under test."""

    name: str
    auto_reply: bool
    """True when an agent answers user messages by itself (remote emulators, local agents)."""

    def settings(self, tmp_path: Path) -> Settings:
        """Server settings that select this backend (and its emulator)."""
        ...

    async def reply(self, client: Client, session_id: str, text: str) -> None:
        """Make an assistant reply appear (mailbox harnesses answer; others do nothing)."""
        ...

    def slow(self) -> AbstractAsyncContextManager[Any]:
        """Inside, the agent takes longer than a short wait (to test timeouts)."""
        ...


def discover() -> dict[str, Any]:
    """name -> module-level HARNESS factory of every harness module."""
    found: dict[str, Any] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        module = importlib.import_module(f"{__name__}.{info.name}")
        factory = getattr(module, "HARNESS", None)
        if factory is not None:
            found[info.name] = factory
    return found
