"""sessions-mcp over stdio built exactly as ``sessions-mcp`` does, plus the ``bench_stats`` tool.

``bench_stats`` also reports ``waiting``: calls parked on the local change feed.
"""

from __future__ import annotations

import logging
import sys

import anyio
from stats import add_stats_tool  # pyright: ignore[reportMissingImports]

from sessions_mcp.server import Runtime, build_server
from sessions_mcp.settings import load_settings

if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    settings = load_settings()
    runtime = Runtime(settings)
    mcp = build_server(settings, runtime=runtime)

    def extra() -> dict[str, int]:
        feed = getattr(runtime.service.backends.get("local"), "feed", None)
        return {"waiting": feed.interest if feed is not None else 0}

    add_stats_tool(mcp, extra)
    anyio.run(mcp.run_stdio_async)
