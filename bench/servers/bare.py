"""The reference server: a bare ``MCPServer`` with one ``echo`` tool, same SDK, same log level.

``python bench/servers/bare.py`` serves stdio; ``... http PORT`` serves the SDK's own streamable
HTTP app under uvicorn on 127.0.0.1; ``--stats`` adds the ``bench_stats`` tool (memory benchmark); ``--page FILE`` a ``page`` tool.
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

mcp = MCPServer("bare", log_level="WARNING")


@mcp.tool()
async def echo(text: str) -> str:
    """Return the text."""
    return text


if "--page" in sys.argv:
    # the SDK cost of returning sessions-mcp's exact list_messages answer (same output model),
    # with no store or service work: ``--page FILE`` holds a captured ``tools/call`` result
    import json
    from pathlib import Path
    from typing import Annotated

    from mcp.types import CallToolResult, TextContent

    from sessions_mcp.service import ListMessagesResult

    captured = json.loads(Path(sys.argv[sys.argv.index("--page") + 1]).read_text())

    @mcp.tool()
    async def page() -> Annotated[CallToolResult, ListMessagesResult]:
        """Return the captured page."""
        return CallToolResult(
            content=[TextContent(type="text", text=captured["content"][0]["text"])],
            structured_content=captured["structuredContent"],
        )

    # published like sessions-mcp publishes it: the schema is advertised, the result not re-validated
    # (sessions_mcp.tools._publish_schema_only), so the difference is the store, service and rendering
    _page_tool = mcp._tool_manager.get_tool("page")  # pyright: ignore[reportPrivateUsage]
    assert _page_tool is not None
    _page_tool.fn_metadata.output_model = None


if "--stats" in sys.argv:
    from stats import add_stats_tool  # pyright: ignore[reportMissingImports]

    add_stats_tool(mcp)

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--") and not a.endswith(".json")]
    if args and args[0] == "http":
        import uvicorn

        uvicorn.run(
            mcp.streamable_http_app(), host="127.0.0.1", port=int(args[1]), log_level="warning", access_log=False
        )
    else:
        mcp.run()
