"""The eight tools' published output schemas, kept as a reviewed file instead of derived at start.

The SDK derives a tool's ``outputSchema`` from its return annotation with pydantic's JSON-schema
generator every time a server is built. For our eight result models that walk took ~15 ms of
every start (registering the tools: 24 -> 9.5 ms in a fresh process; bench budget 1), for a
result that only changes when a result model changes. So the schemas live in ``output_schemas.json`` beside this module:
the server publishes them as they are, and a test derives them the SDK's way and fails when the
file is stale. A changed model thus shows up as a reviewed diff of the public contract.

Regenerate after changing a result model::

    python -m sessions_mcp.output_schemas --write
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SNAPSHOT = Path(__file__).with_name("output_schemas.json")


def published() -> dict[str, dict[str, Any]]:
    """Tool name → output schema from the snapshot; empty (derive them all) when it is unreadable."""
    try:
        data: Any = json.loads(SNAPSHOT.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("output schemas: %s is unreadable (%s); deriving them instead (slower start)", SNAPSHOT, exc)
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
        log.warning("output schemas: %s is not an object of schemas; deriving them instead", SNAPSHOT)
        return {}
    return data  # pyright: ignore[reportUnknownVariableType]


def derive() -> dict[str, dict[str, Any]]:
    """The output schemas as the SDK derives them from the tools' return annotations (slow)."""
    import tempfile

    from mcp.server.mcpserver import MCPServer

    from .server import Runtime
    from .settings import LocalSettings, Settings
    from .tools import register_tools

    with tempfile.TemporaryDirectory() as tmp:  # the schemas depend on no setting; keep the user's store out of it
        settings = Settings(backends=["local"], local=LocalSettings(db=str(Path(tmp) / "derive.db")))
        mcp = MCPServer("derive")
        register_tools(mcp, Runtime(settings).service, open_world=False, output_schemas={})
    tools = mcp._tool_manager.list_tools()  # pyright: ignore[reportPrivateUsage]
    return {t.name: t.fn_metadata.output_schema for t in tools if t.fn_metadata.output_schema is not None}


def render(schemas: dict[str, dict[str, Any]]) -> str:
    """The snapshot file's text for these schemas (stable: sorted tools, two-space indent)."""
    return json.dumps(dict(sorted(schemas.items())), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    """``python -m sessions_mcp.output_schemas [--write]``: check (exit 1 when stale) or rewrite."""
    text = render(derive())
    if "--write" in argv:
        SNAPSHOT.write_text(text, encoding="utf-8")
        print(f"wrote {SNAPSHOT}", file=sys.stderr)
        return 0
    current = SNAPSHOT.read_text(encoding="utf-8") if SNAPSHOT.exists() else ""
    if current != text:
        print(f"{SNAPSHOT} is stale: run python -m sessions_mcp.output_schemas --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
