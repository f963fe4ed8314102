"""Tool registration: schemas are published, results are not re-validated by the SDK (bench budget 2)."""

from __future__ import annotations

from collections.abc import Callable

from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings

EIGHT = {
    "create_session", "send_message", "list_messages", "get_session",
    "list_sessions", "rename_session", "interrupt_session", "delete_session",
}  # fmt: skip


def test_every_tool_publishes_its_schema_and_skips_sdk_revalidation(make_settings: Callable[..., Settings]) -> None:
    mcp = build_server(make_settings())
    tools = {t.name: t for t in mcp._tool_manager.list_tools()}  # pyright: ignore[reportPrivateUsage]
    assert set(tools) >= EIGHT
    for name in EIGHT:
        meta = tools[name].fn_metadata
        assert meta.output_schema is not None and meta.output_schema.get("properties"), name
        assert meta.output_model is None, name  # validated by the client against the schema instead
