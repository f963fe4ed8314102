"""Named agents without a coding CLI: discovery, choosing an agent and a folder, settings, rendering."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp.types import PromptReference

from sessions_mcp.backends.local.registry import PRESETS, check_workdir, resolve_agents
from sessions_mcp.models import Message, Session
from sessions_mcp.render import transcript_markdown
from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings

from .conftest import client_for

pytestmark = pytest.mark.anyio


def fake_cli(folder: Path, name: str) -> Path:
    """An executable called ``name`` (availability only looks at PATH)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


async def test_index_description_and_completions_name_the_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings]
) -> None:
    bin_dir = tmp_path / "bin"
    fake_cli(bin_dir, "qwen")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin:/bin")
    settings = make_settings(local={"agent": "qwen"}, agents={"mine": {"kind": "command", "command": "true"}})
    async with client_for(build_server(settings), "auto") as c:
        index = json.loads((await c.read_resource("sessions://index")).contents[0].text)  # pyright: ignore
        agents = {a["name"]: a for a in index["agents"]}
        assert set(PRESETS) | {"none", "mine"} <= set(agents)
        assert agents["qwen"]["available"] and agents["qwen"]["default"] and agents["qwen"]["kind"] == "acp"
        assert not agents["gemini"]["available"] and "npm install -g @google/gemini-cli" in agents["gemini"]["detail"]
        assert agents["mine"] == {
            "name": "mine", "kind": "command", "available": True, "default": False, "detail": agents["mine"]["detail"]
        }  # fmt: skip
        tools = {t.name: t for t in (await c.list_tools()).tools}
        desc = tools["create_session"].input_schema["properties"]["agent"]["description"]
        assert "qwen" in desc and "default: qwen" in desc and "gemini" in desc
        assert "workdir" in tools["create_session"].input_schema["properties"]
        done = await c.complete(PromptReference(type="ref/prompt", name="delegate"), {"name": "agent", "value": "q"})
        assert done.completion.values == ["qwen"]


async def test_agent_and_workdir_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings]
) -> None:
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    root = tmp_path / "root"
    (root / "proj").mkdir(parents=True)
    settings = make_settings(
        local={"agent_roots": [str(root)]},
        agents={"echo": {"kind": "command", "command": f"{sys.executable} -c print(1)"}},
    )
    async with client_for(build_server(settings), "auto") as c:

        async def error(**args: Any) -> str:
            r = await c.call_tool("create_session", args)
            assert r.is_error, r.content
            return str(r.content)

        assert "SESSIONS_MCP_LOCAL__AGENT_ROOTS" in await error(agent="echo", workdir=str(tmp_path), prompt="x")
        assert "SESSIONS_MCP_LOCAL__AGENT_ROOTS" in await error(agent="echo", workdir=f"{root}/proj/../..", prompt="x")
        assert "not an existing folder" in await error(agent="echo", workdir=str(root / "nope"), prompt="x")
        assert "npm install -g @anthropic-ai" not in await error(agent="claude", prompt="x")
        assert "claude-agent-acp" in await error(agent="claude", prompt="x")  # not installed: says what to install
        assert "not configured" in await error(agent="nobody", prompt="x")
        assert "needs an agent" in await error(workdir=str(root), prompt="x")
        r = await c.call_tool("create_session", {"agent": "echo", "workdir": str(root / "proj"), "prompt": "hi"})
        assert not r.is_error, r.content
        assert r.structured_content is not None
        assert r.structured_content["status"] == "idle" and r.structured_content["messages"][-1]["text"] == "1\n"


async def test_a_command_agent_by_name_runs_in_its_workdir(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    cmd = f"{sys.executable} -c 'import os; print(os.getcwd())'"
    settings = make_settings(
        local={"agent_roots": [str(root)], "agent_input": "none"}, agents={"pwd": {"kind": "command", "command": cmd}}
    )
    async with client_for(build_server(settings), "auto") as c:
        r = await c.call_tool("create_session", {"agent": "pwd", "workdir": str(root / "a"), "prompt": "where?"})
        assert r.structured_content is not None, r.content
        assert r.structured_content["messages"][-1]["text"].strip() == str((root / "a").resolve())


def test_settings_resolve_presets_configured_and_first_stage_agents(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(
        local={"agent": "command", "agent_command": "my-agent"},
        agents={"claude": {"command": "/opt/claude-acp --x", "permissions": "deny"}, "ollama": {"kind": "openai"}},
    )
    specs = resolve_agents(s.local, s.agents)
    assert specs["claude"].argv == ("/opt/claude-acp", "--x") and specs["claude"].permissions == "deny"
    assert specs["claude"].preset is PRESETS["claude"]  # the preset's ACP quirks still apply
    assert specs["command"].source == "legacy" and specs["command"].available
    assert not specs["ollama"].available and "SESSIONS_MCP_AGENTS__OLLAMA__MODEL" in specs["ollama"].detail
    with pytest.raises(Exception, match="lower-case"):
        make_settings(agents={"Bad Name": {}})


def test_workdir_must_be_inside_a_root(tmp_path: Path) -> None:
    (tmp_path / "r" / "x").mkdir(parents=True)
    (tmp_path / "r2").mkdir()
    assert check_workdir(str(tmp_path / "r" / "x"), [str(tmp_path / "r")]) == str((tmp_path / "r" / "x").resolve())
    with pytest.raises(ValueError, match="outside"):
        check_workdir(str(tmp_path / "r2"), [str(tmp_path / "r")])  # a sibling sharing the prefix


def test_transcript_folds_each_tool_call_to_one_line() -> None:
    session = Session.model_validate(
        {"id": "local:x", "backend": "local", "status": "idle", "created_at": "2026-01-01T00:00:00Z",
         "updated_at": "2026-01-01T00:00:00Z", "transcript_uri": "t", "messages_uri": "m"}
    )  # fmt: skip
    msg = Message.model_validate(
        {"id": "m1", "session_id": "local:x", "role": "tool", "text": "", "created_at": "2026-01-01T00:00:00Z",
         "parts": [{"type": "tool_call", "id": "c1", "name": "execute", "title": "echo hi > out.txt",
                    "status": "completed", "input": {"command": "echo hi > out.txt\nand more"}},
                   {"type": "tool_result", "tool_call_id": "c1", "status": "completed", "text": "done"},
                   {"type": "plan", "entries": [{"text": "write the file", "status": "completed"}]}]}
    )  # fmt: skip
    md = transcript_markdown(session, [msg])
    line = next(ln for ln in md.splitlines() if ln.startswith("**tool call**"))
    assert "echo hi > out.txt" in line and "(completed)" in line
    assert "- [completed] write the file" in md
    assert msg.parts[1].output == "done"  # pyright: ignore[reportAttributeAccessIssue]


async def test_acp_updates_become_parts_in_order(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    """The translator on the SDK's own models, parsed from the JSON agents send (Gemini's lifecycle:
    the tool call first seen in a permission request, then its update; Claude's plan and thoughts)."""
    from acp.schema import SessionNotification, ToolCallUpdate

    from sessions_mcp.backends.base import CreateRequest
    from sessions_mcp.backends.local.agents.acp.updates import Translator
    from sessions_mcp.backends.local.agents.turnio import TurnIO
    from sessions_mcp.backends.local.backend import LocalBackend
    from sessions_mcp.store.sqlite import SqliteStore

    settings = make_settings()
    store = SqliteStore(str(tmp_path / "t.db"))
    backend = LocalBackend(store, settings.local)
    await store.open()
    try:
        created = await backend.create_session(CreateRequest(principal="p", prompt=None))
        sid = created.session.native_id
        io = TurnIO(backend, "p", sid, limit=10_000)
        tr = Translator(io)

        def update(u: dict[str, Any]) -> Any:
            return SessionNotification.model_validate({"sessionId": "s", "update": u}).update

        await tr.update(update({"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": "hmm"}}))
        await tr.update(
            update({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "I will "}})
        )
        await tr.update(update({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "write"}}))
        await tr.update(update({"sessionUpdate": "plan", "entries": [
            {"content": "write the file", "priority": "high", "status": "in_progress"}]}))  # fmt: skip
        asked = ToolCallUpdate.model_validate({"toolCallId": "t1", "status": "pending", "title": "echo hi > out.txt",
                                               "kind": "execute", "rawInput": {"command": "echo hi > out.txt"}})  # fmt: skip
        await tr.track(asked)
        await tr.update(update({"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "completed",
                                "content": [{"type": "content", "content": {"type": "text", "text": "done"}}]}))  # fmt: skip
        await tr.update(update({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "Done."}}))
        await tr.finish()
        page = await store.list_messages("p", sid, after_seq=0, limit=10)
        assert page is not None
        rows = page[1]
        assert [r.role for r in rows] == ["assistant", "tool"]
        assert [p["type"] for p in rows[0].parts] == ["thinking", "text", "plan"]
        assert rows[0].text.startswith("I will write")
        call, result = rows[1].parts
        assert (call["type"], call["name"], call["title"], call["status"]) == (
            "tool_call",
            "execute",
            "echo hi > out.txt",
            "completed",
        )
        assert call["input"] == {"command": "echo hi > out.txt"}
        assert (result["tool_call_id"], result["status"], result["text"]) == ("t1", "completed", "done")
        assert io.segment == [{"type": "text", "text": "Done."}]  # the rest is written when the turn ends
    finally:
        await store.close()


async def test_slots_evict_the_least_recently_used_idle_process_then_queue_then_reap() -> None:
    import anyio

    from sessions_mcp.backends.local.agents.slots import Slots

    stopped: list[str] = []

    class Keeper:  # an agent that keeps a process after each turn, like the ACP agent
        def idle_closer(self, session_id: str) -> Any:
            async def close() -> None:
                stopped.append(session_id)

            return close

    slots, agent = Slots(2), Keeper()
    for sid in ("a", "b"):
        async with slots.hold(sid, agent):
            pass
    assert list(slots.idle) == ["a", "b"] and not stopped
    async with slots.hold("a", agent):  # a's own process: no eviction
        assert stopped == []
    async with slots.hold("c", agent):  # full: the least recently used idle one (b) goes
        assert stopped == ["b"]
        queued = anyio.Event()

        async def d_turn() -> None:
            async with slots.hold("d", agent, on_queue=lambda: _set(queued)):
                pass

        # e takes a's idle slot; d must wait for a turn to end
        async with anyio.create_task_group() as tg, slots.hold("e", agent):
            tg.start_soon(d_turn)
            await queued.wait()
    await slots.reap(idle_s=0)
    assert not slots.idle and set(stopped) == {"a", "b", "c", "d", "e"}


async def _set(event: Any) -> None:
    event.set()
