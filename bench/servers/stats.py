"""A ``bench_stats`` tool for the memory benchmark: live asyncio tasks, threads, fds, GC objects."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from collections.abc import Callable
from typing import Any


def add_stats_tool(mcp: Any, extra: Callable[[], dict[str, int]] | None = None) -> None:
    """Register ``bench_stats`` (and ``bench_sleep``) on an ``MCPServer``; ``extra`` adds counters."""

    @mcp.tool(name="bench_stats")
    async def bench_stats() -> dict[str, int]:
        """Process counters the memory benchmark watches for growth."""
        return {
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "fds": len(os.listdir("/proc/self/fd")),
            "gc_objects": len(gc.get_objects()),
            **(extra() if extra is not None else {}),
        }

    @mcp.tool(name="bench_sleep")
    async def bench_sleep(seconds: float) -> str:
        """Hold the call open for ``seconds`` (the bare reference for waiting calls)."""
        import anyio

        await anyio.sleep(seconds)
        return "slept"
