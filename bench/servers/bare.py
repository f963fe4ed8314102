"""The reference server: a bare ``MCPServer`` with one ``echo`` tool, same SDK, same log level.

``python bench/servers/bare.py`` serves stdio; ``... http PORT`` serves the SDK's own streamable
HTTP app under uvicorn on 127.0.0.1; ``--stats`` adds the ``bench_stats`` tool (memory benchmark).
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("bare", log_level="WARNING")


@mcp.tool()
async def echo(text: str) -> str:
    """Return the text."""
    return text


if "--stats" in sys.argv:
    from stats import add_stats_tool  # pyright: ignore[reportMissingImports]

    add_stats_tool(mcp)

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if args and args[0] == "http":
        import uvicorn

        uvicorn.run(mcp.streamable_http_app(), host="127.0.0.1", port=int(args[1]), log_level="warning")
    else:
        mcp.run()
