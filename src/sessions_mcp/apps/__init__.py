"""MCP Apps of this server: the live session view, ``ui://sessions-mcp/session.html``, via ``mcp.server.apps``.

``session.html`` beside this module is built from ``web/`` (the ext-apps App SDK bundled in by
esbuild) and committed, so the package never needs Node at run time. ``create_session``,
``send_message`` and ``get_session`` point at it with :data:`TOOL_META`; hosts that render MCP
Apps show the session live, every other client gets the same results as before and ignores the
``_meta``.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from mcp.server.apps import Apps, ResourceCsp

VIEW_URI = "ui://sessions-mcp/session.html"
"""The view's resource URI."""

TOOL_META: dict[str, Any] = {"ui": {"resourceUri": VIEW_URI}, "openai/outputTemplate": VIEW_URI}
"""``_meta`` of the tools that open the view (MCP Apps reads ``ui``, ChatGPT ``openai/outputTemplate``)."""

VIEW_CSP = ResourceCsp(connect_domains=[], resource_domains=[], frame_domains=[], base_uri_domains=[])
"""No origin outside the page itself: the view reaches the server only through the host."""


@cache
def view_html() -> str:
    """The built page (read once)."""
    return files(__name__).joinpath("session.html").read_text(encoding="utf-8")


def session_view() -> Apps:
    """The Apps extension that serves the view; pass it to ``MCPServer(extensions=[...])``."""
    apps = Apps()
    apps.add_html_resource(
        VIEW_URI,
        view_html(),
        name="session-view",
        title="Live session view",
        description="An interactive view of one session (status, transcript, pending request, follow-up, "
        "interrupt) for hosts that render MCP Apps.",
        csp=VIEW_CSP,
        prefers_border=True,
    )
    return apps
