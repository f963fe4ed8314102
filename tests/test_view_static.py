"""Static checks of the live session view: tool ``_meta``, the ``ui://`` resource, the built page.

The ``_meta`` shapes are validated against the ext-apps package's own JSON Schema
(``web/node_modules/@modelcontextprotocol/ext-apps/dist/src/generated/schema.json``, installed by
``scripts/setup-browser.sh``); ``mcp-app-validator`` is not on the npm registry, so its checks
(resource format, tool metadata, CSP, no outside URL) are done here.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import jsonschema
import pytest
from mcp import Client
from mcp.client import advertise
from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID

from sessions_mcp.apps import TOOL_META, VIEW_URI, view_html
from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings

from .browser_support import SETUP_HINT, WEB, node
from .conftest import client_for

VIEW_TOOLS = {"create_session", "send_message", "get_session"}
SCHEMA = WEB / "node_modules" / "@modelcontextprotocol" / "ext-apps" / "dist" / "src" / "generated" / "schema.json"
SOURCES = ["build.mjs", "package-lock.json", "src/render.js", "src/session.html", "src/view.css", "src/view.js"]
"""The files web/build.mjs hashes into the page (its SOURCES)."""


def ext_apps_schema(name: str) -> dict[str, Any]:
    assert SCHEMA.exists(), f"{SCHEMA} is missing: {SETUP_HINT}"
    return json.loads(SCHEMA.read_text())["$defs"][name]


def apps_client(mcp: Any, era: str) -> Client:
    return client_for(mcp, era, extensions=[advertise(EXTENSION_ID, {"mimeTypes": [APP_MIME_TYPE]})])


@pytest.mark.anyio
async def test_tools_point_at_the_view_and_the_resource_is_an_app(
    make_settings: Callable[..., Settings], era: str
) -> None:
    tool_schema = ext_apps_schema("McpUiToolMeta")
    resource_schema = ext_apps_schema("McpUiResourceMeta")
    async with apps_client(build_server(make_settings()), era) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        for name, tool in tools.items():
            if name in VIEW_TOOLS:
                assert tool.meta == TOOL_META, name
                assert tool.meta["ui"]["resourceUri"] == VIEW_URI
                assert tool.meta["openai/outputTemplate"] == VIEW_URI
                jsonschema.validate(tool.meta["ui"], tool_schema)
            else:
                assert not (tool.meta or {}).get("ui"), name
        listed = {str(r.uri): r for r in (await client.list_resources()).resources}
        assert listed[VIEW_URI].mime_type == APP_MIME_TYPE
        read = await client.read_resource(VIEW_URI)
    assert len(read.contents) == 1
    content = read.contents[0]
    assert content.mime_type == APP_MIME_TYPE
    assert str(content.uri) == VIEW_URI
    meta = content.meta or {}
    jsonschema.validate(meta["ui"], resource_schema)
    # no outside origin of any kind: the view reaches the server only through the host
    assert meta["ui"]["csp"] == {"connectDomains": [], "resourceDomains": [], "frameDomains": [], "baseUriDomains": []}
    assert content.text == view_html()


@pytest.mark.anyio
async def test_the_server_advertises_the_apps_extension(make_settings: Callable[..., Settings], era: str) -> None:
    async with client_for(build_server(make_settings()), era) as client:
        caps = client.server_capabilities
    if era == "legacy":
        # capabilities.extensions is a 2026-07-28 field: the SDK leaves it off the 2025-11-25 wire,
        # where hosts find the view by the tools' _meta alone
        assert caps.extensions is None
    else:
        assert caps.extensions is not None and EXTENSION_ID in caps.extensions


@pytest.mark.anyio
async def test_clients_without_apps_get_the_same_results(make_settings: Callable[..., Settings], era: str) -> None:
    """The view changes nothing in any result: a client that never negotiated Apps sees what an Apps host sees."""
    mcp = build_server(make_settings())
    async with client_for(mcp, era) as plain, apps_client(mcp, era) as apps:
        created = await plain.call_tool("create_session", {"title": "t", "prompt": "hi", "agent": "none"})
        assert created.structured_content is not None
        assert created.meta is None or "ui" not in created.meta
        sid = created.structured_content["session"]["id"]
        for name, args in (
            ("get_session", {"session_id": sid}),
            ("list_messages", {"session_id": sid}),
            ("list_sessions", {}),
        ):
            a, b = await plain.call_tool(name, args), await apps.call_tool(name, args)
            assert [a.content, a.structured_content, a.meta, a.is_error] == [
                b.content,
                b.structured_content,
                b.meta,
                b.is_error,
            ], name
            assert a.meta is None or "ui" not in a.meta, name
        sent = await apps.call_tool("send_message", {"session_id": sid, "text": "again"})
        assert sent.structured_content is not None
        assert sorted(sent.structured_content) == sorted(
            (await plain.call_tool("send_message", {"session_id": sid, "text": "and again"})).structured_content or {}
        )


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.url_attrs: list[tuple[str, str, str | None]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href", "action", "formaction", "srcset", "poster", "data", "background", "ping"):
                self.url_attrs.append((tag, key, value))
        self._in = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)


# URLs that occur as plain strings in the bundled SDK code (JSON-Schema dialect identifiers and
# one error message): identifiers, never fetched. A new one fails this test until someone looks.
KNOWN_STRINGS = {
    "https://json-schema.org/draft/2020-12/schema",
    "http://json-schema.org/draft-07/schema#",
    "http://json-schema.org/draft-04/schema#",
    "https://json-schema.org/draft/2019-09/schema",
    "https://json-schema.org/draft-07/schema",
    "https://json-schema.org/draft-06/schema",
    "https://github.com/cfworker",
    "https://*.example.com",
    "http://json-schema.org/draft/2020-12/schema",
    "http://json-schema.org/draft/2019-09/schema",
    "http://json-schema.org/draft-07/schema",
    "http://json-schema.org/draft-06/schema",
    "http://[${e}]",
}


def test_the_page_loads_nothing_from_outside_and_has_no_links() -> None:
    html = view_html()
    page = _Page()
    page.feed(html)
    assert page.url_attrs == []
    for tag in ("a", "link", "iframe", "frame", "object", "embed", "base", "img", "video", "audio", "source"):
        assert tag not in page.tags, tag
    assert page.tags.count("script") == 1 and page.tags.count("style") == 1
    css = "".join(page.styles)
    assert "url(" not in css and "@import" not in css
    script = "".join(page.scripts)
    assert not re.search(r"\bimport\s*\(|importScripts|new\s+Worker|\.src\s*=", script)
    assert "document.write" not in script and "innerHTML" not in script.replace("innerHTML:", "")
    urls = set(re.findall(r"""(?:https?|wss?|ftp)://[^\s"'`)\\]*""", html))
    assert urls <= KNOWN_STRINGS, urls - KNOWN_STRINGS
    assert "<a " not in html


def test_the_committed_page_matches_its_sources() -> None:
    """The hash recorded in the page is the hash of web/'s sources (no Node needed)."""
    h = hashlib.sha256()
    for name in SOURCES:
        data = (WEB / name).read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    recorded = re.search(r'<meta name="sessions-mcp-view-source" content="([^"]+)">', view_html())
    assert recorded, "the page records no source hash"
    assert recorded.group(1) == f"sha256:{h.hexdigest()}", (
        "src/sessions_mcp/apps/session.html is older than web/: run `npm --prefix web ci && npm --prefix web run build`"
    )
    build = (WEB / "build.mjs").read_text()
    assert f"export const SOURCES = {json.dumps(SOURCES)};" in build, "SOURCES here and in web/build.mjs differ"


@pytest.mark.browser
def test_a_fresh_build_is_byte_for_byte_the_committed_page() -> None:
    assert (WEB / "node_modules" / "esbuild").exists(), SETUP_HINT
    r = subprocess.run([node(), str(WEB / "build.mjs"), "--check"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr + r.stdout
