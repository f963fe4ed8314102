"""The tools' published output schemas come from a reviewed snapshot that matches the models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mcp.server.mcpserver import MCPServer
from pydantic import TypeAdapter

from sessions_mcp import output_schemas
from sessions_mcp.server import Runtime, build_server
from sessions_mcp.settings import LocalSettings, Settings
from sessions_mcp.tools import register_tools

TOOLS = {
    "create_session", "send_message", "list_messages", "get_session",
    "list_sessions", "rename_session", "interrupt_session", "delete_session",
}  # fmt: skip


def _settings(tmp_path: Path) -> Settings:
    return Settings(backends=["local"], local=LocalSettings(db=str(tmp_path / "s.db")))


def _published(mcp: MCPServer) -> dict[str, object]:
    tools = mcp._tool_manager.list_tools()  # pyright: ignore[reportPrivateUsage]
    return {t.name: t.output_schema for t in tools}


def test_the_snapshot_is_what_the_sdk_derives_from_the_models() -> None:
    """Fails when a result model changed and the snapshot was not regenerated (the message says how)."""
    derived = output_schemas.derive()
    assert set(derived) == TOOLS
    assert output_schemas.render(derived) == output_schemas.SNAPSHOT.read_text(encoding="utf-8"), (
        "src/sessions_mcp/output_schemas.json is stale: run python -m sessions_mcp.output_schemas --write"
    )
    check = subprocess.run(
        [sys.executable, "-m", "sessions_mcp.output_schemas"], capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stderr


def test_a_built_server_publishes_the_snapshot_without_deriving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    derivations: list[object] = []
    real = TypeAdapter.json_schema

    def counted(self: TypeAdapter[object], *args: object, **kwargs: object) -> object:
        derivations.append(self)  # the SDK derives an output schema through TypeAdapter.json_schema
        return real(self, *args, **kwargs)  # pyright: ignore[reportArgumentType]

    monkeypatch.setattr(TypeAdapter, "json_schema", counted)
    mcp = build_server(_settings(tmp_path))
    assert derivations == []
    assert _published(mcp) == output_schemas.published()
    for tool in mcp._tool_manager.list_tools():  # pyright: ignore[reportPrivateUsage]
        assert tool.fn_metadata.output_model is None  # advertised, not re-validated
    # the same build without the snapshot derives one schema per tool, and publishes the same
    register_tools(MCPServer("t"), Runtime(_settings(tmp_path)).service, open_world=False, output_schemas={})
    assert len(derivations) == len(TOOLS)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"get_session": 3}'])
def test_an_unreadable_snapshot_falls_back_to_deriving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    bad = tmp_path / "output_schemas.json"
    bad.write_text(content)
    monkeypatch.setattr(output_schemas, "SNAPSHOT", bad)
    assert output_schemas.published() == {}
    assert "deriving them instead" in caplog.text
    mcp = build_server(_settings(tmp_path))
    good = json.loads((Path(output_schemas.__file__).with_name("output_schemas.json")).read_text())
    assert _published(mcp) == good


def test_a_tool_missing_from_the_snapshot_gets_a_derived_schema(tmp_path: Path) -> None:
    full = output_schemas.published()
    partial = {k: v for k, v in full.items() if k != "list_messages"}
    mcp = MCPServer("t")
    register_tools(mcp, Runtime(_settings(tmp_path)).service, open_world=False, output_schemas=partial)
    assert _published(mcp) == full
