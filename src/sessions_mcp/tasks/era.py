"""Which protocol era a request speaks, whether it declared the tasks extension, era-specific shapes."""

from __future__ import annotations

import json
from typing import Any

from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import MISSING_REQUIRED_CLIENT_CAPABILITY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from .model import EXTENSION_ID, TaskView, as_dict

LEGACY_VERSION = "2025-11-25"
"""The one handshake revision with tasks."""


def is_modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether the request speaks 2026-07-28 (per-request ``_meta``, no handshake)."""
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


def declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether this request declares the tasks extension in its ``_meta`` client capabilities."""
    caps = as_dict(as_dict(ctx.meta).get("io.modelcontextprotocol/clientCapabilities"))
    return EXTENSION_ID in as_dict(caps.get("extensions"))


def require_extension(ctx: ServerRequestContext[Any, Any]) -> None:
    """2026-07-28: -32021 unless the request declared the extension (2025-11-25 needs nothing)."""
    if is_modern(ctx) and not declared(ctx):
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message=f"Missing required client capability: declare the {EXTENSION_ID!r} extension in this "
            "request's _meta clientCapabilities to use tasks",
            data={"requiredCapabilities": {"extensions": {EXTENSION_ID: {}}}},
        )


def legacy_view(view: TaskView) -> dict[str, Any]:
    """The 2025-11-25 task; a call that completed with ``isError`` is ``failed`` there (SEP-1686)."""
    out = {**view.legacy(), "_meta": view.meta()}
    if view.status == "completed" and view.row.result is not None and json.loads(view.row.result).get("isError"):
        out["status"] = "failed"
    return out
