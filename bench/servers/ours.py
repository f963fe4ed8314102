"""sessions-mcp built exactly as ``sessions-mcp`` does, plus benchmark-only tools.

``python bench/servers/ours.py`` serves stdio with a ``bench_stats`` tool (which also reports
``waiting``: calls parked on the local change feed). ``python bench/servers/ours.py http PORT``
serves sessions-mcp's own HTTP app (``serve_http``, as ``--transport http`` does) with an extra
``echo`` tool identical to the bare server's, so the HTTP stack can be compared with the bare SDK
app on the same tool.
"""

from __future__ import annotations

import logging
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from stats import add_stats_tool  # pyright: ignore[reportMissingImports]

from sessions_mcp import server
from sessions_mcp.settings import load_settings


def _with_echo(*args: object, **kwargs: object) -> MCPServer:
    mcp = build(*args, **kwargs)  # pyright: ignore[reportArgumentType]

    @mcp.tool()
    async def echo(text: str) -> str:  # pyright: ignore[reportUnusedFunction]
        """Return the text."""
        return text

    return mcp


build = server.build_server

if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    settings = load_settings()
    if sys.argv[1:2] == ["http"]:
        from sessions_mcp.http_app import serve_http

        server.build_server = _with_echo  # create_app builds the server through this name
        settings.http.port = int(sys.argv[2])
        sys.exit(serve_http(settings))
    runtime = server.Runtime(settings)
    mcp = build(settings, runtime=runtime)

    def extra() -> dict[str, int]:
        feed = getattr(runtime.service.backends.get("local"), "feed", None)
        return {"waiting": feed.interest if feed is not None else 0}

    add_stats_tool(mcp, extra)
    anyio.run(mcp.run_stdio_async)
