"""The a2a backend against real A2A agents (a2a-sdk's server classes under uvicorn on 127.0.0.1):
streaming, polling-only, input-required, cancel, bearer auth, A2A 0.3, HTTP+JSON, restarts, doctor."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from sessions_mcp.doctor import collect
from sessions_mcp.server import Runtime, build_server, instructions
from sessions_mcp.settings import Settings, load_settings

from .conftest import client_for
from .emulators.a2a_agents import serving

pytestmark = pytest.mark.anyio
TOKEN = "a2a-test-token-0123456789"


def settings_for(tmp_path: Path, agents: str, **a2a: Any) -> Settings:
    return load_settings(
        None, backends=["a2a"], local={"db": str(tmp_path / "a2a.db")}, a2a={"agents": agents, "timeout_s": 10, **a2a}
    )


@asynccontextmanager
async def connected(settings: Settings, era: str = "auto") -> AsyncIterator[Client]:
    async with client_for(build_server(settings), era) as c:
        yield c


async def call(c: Client, tool: str, progress: Any = None, **args: Any) -> dict[str, Any]:
    r = await c.call_tool(tool, args, progress_callback=progress)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


async def error(c: Client, tool: str, **args: Any) -> str:
    r = await c.call_tool(tool, args)
    assert r.is_error, r.structured_content
    return r.content[0].text  # type: ignore[union-attr]


def ids(message: dict[str, Any]) -> dict[str, str]:
    return next(p["data"] for p in message["parts"] if p["type"] == "raw" and p["backend_type"] == "a2a.ids")


async def until(predicate: Any, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


@pytest.mark.parametrize("era", ["auto", "legacy"])
async def test_streaming_agent_reply_artifacts_and_progress(tmp_path: Path, era: str) -> None:
    progress: list[str] = []

    async def on_progress(_p: float, _t: float | None, message: str | None) -> None:
        progress.append(message or "")

    with serving() as agent:
        agent.behaviour.released.set()
        async with connected(settings_for(tmp_path, f"helper={agent.url}"), era) as c:
            r = await call(c, "create_session", on_progress, prompt="hello there", timeout_s=10)
            assert r["status"] == "idle" and r["session"]["agent"] == "helper"
            user, reply = r["messages"]
            assert user["text"] == "hello there" and user["role"] == "user"
            assert reply["role"] == "assistant"
            # the final status message and the artifact (two streamed chunks, joined) make one message
            assert reply["text"] == "done\necho: hello there"
            assert ids(user)["task_id"] == ids(reply)["task_id"] and ids(reply)["state"] == "completed"
            assert any("working on hello there" in p for p in progress), progress
            page = await call(c, "list_messages", session_id=r["session"]["id"])
            assert [m["role"] for m in page["messages"]] == ["user", "assistant"]  # working texts are progress only
            # the next message continues the same A2A context, in a new task
            sent = await call(c, "send_message", session_id=r["session"]["id"], text="again", timeout_s=10)
            assert sent["status"] == "idle" and "echo: again" in sent["messages"][-1]["text"]
            assert ids(sent["messages"][0])["context_id"] == ids(user)["context_id"]
            assert ids(sent["messages"][0])["task_id"] != ids(user)["task_id"]


async def test_polling_only_agent(tmp_path: Path) -> None:
    with serving(streaming=False) as agent:
        agent.behaviour.released.set()
        async with connected(settings_for(tmp_path, f"helper={agent.url}", poll_max_s=0.2)) as c:
            r = await call(c, "create_session", prompt="slow poll", timeout_s=10)
            assert r["status"] == "idle"
            assert r["messages"][-1]["text"] == "done\npartial echo: slow poll"


async def test_http_json_binding(tmp_path: Path) -> None:
    with serving(rest=True) as agent:
        agent.behaviour.released.set()
        async with connected(settings_for(tmp_path, f"helper={agent.url}")) as c:
            r = await call(c, "create_session", prompt="over rest", timeout_s=10)
            assert r["status"] == "idle" and "echo: over rest" in r["messages"][-1]["text"]


@pytest.mark.parametrize("streaming", [True, False])
async def test_input_required_is_needs_input_answered_in_the_same_task(tmp_path: Path, streaming: bool) -> None:
    with serving(streaming=streaming) as agent:
        async with connected(settings_for(tmp_path, f"helper={agent.url}", poll_max_s=0.2)) as c:
            r = await call(c, "create_session", prompt="ask me something", timeout_s=10)
            sid = r["session"]["id"]
            assert r["status"] == "needs_input"
            pending = r["pending"]
            assert pending["kind"] == "question" and pending["text"] == "which colour?" and pending["options"] is None
            assert r["session"]["pending"] == pending
            assert r["messages"][-1]["text"] == "which colour?"  # the question is in the transcript
            inbox = await call(c, "list_sessions", status="needs_input")
            assert [s["id"] for s in inbox["sessions"]] == [sid]
            answered = await call(c, "send_message", session_id=sid, text="blue", timeout_s=10)
            assert answered["status"] == "idle" and answered["pending"] is None
            assert answered["messages"][-1]["text"] == "thanks\necho: blue"
            task = ids(r["messages"][0])["task_id"]
            assert ids(answered["messages"][0])["task_id"] == task == pending["id"]
            got = await call(c, "get_session", session_id=sid)
            assert got["pending"] is None and got["status"] == "idle"


async def test_interrupt_cancels_the_task_and_keeps_what_arrived(tmp_path: Path) -> None:
    progress: list[str] = []
    with serving() as agent:
        async with connected(settings_for(tmp_path, f"helper={agent.url}")) as c:
            r = await call(c, "create_session", prompt="slow work", wait=False)
            sid = r["session"]["id"]
            assert r["status"] == "running"
            assert "still working" in await error(c, "send_message", session_id=sid, text="more")

            async def on_progress(_p: float, _t: float | None, message: str | None) -> None:
                progress.append(message or "")

            waited = await call(c, "list_messages", on_progress, session_id=sid, after=r["cursor"], wait_s=0.5)
            assert waited["status"] == "running" and waited["messages"] == []
            stopped = await call(c, "interrupt_session", session_id=sid)
            assert stopped["status"] == "idle"
            assert agent.behaviour.cancelled == [ids(r["messages"][0])["task_id"]]
            page = await call(c, "list_messages", session_id=sid)
            last = page["messages"][-1]
            assert last["role"] == "assistant" and "partial" in last["text"] and last["text"].endswith("[interrupted]")
            assert ids(last)["state"] == "canceled"
            again = await call(c, "interrupt_session", session_id=sid)  # idempotent
            assert again["status"] == "idle" and again["message_count"] == page["messages"].__len__()
            agent.behaviour.released.set()
            follow = await call(c, "send_message", session_id=sid, text="after", timeout_s=10)
            assert follow["status"] == "idle"


async def test_bearer_token_goes_to_its_agent_only(tmp_path: Path) -> None:
    with serving(token=TOKEN) as locked, serving() as other:
        locked.behaviour.released.set()
        other.behaviour.released.set()
        agents = f"locked={locked.url},other={other.url}"
        async with connected(settings_for(tmp_path, agents, tokens=f"locked={TOKEN}")) as c:
            a = await call(c, "create_session", prompt="secret", agent="locked", timeout_s=10)
            assert a["status"] == "idle" and a["session"]["agent"] == "locked"
            b = await call(c, "create_session", prompt="public", agent="other", timeout_s=10)
            assert b["status"] == "idle" and "echo: public" in b["messages"][-1]["text"]
            d = await call(c, "create_session", prompt="default")  # the first agent is the default
            assert d["session"]["agent"] == "locked"
            assert "unknown A2A agent 'nope'" in (msg := await error(c, "create_session", agent="nope"))
            assert "locked, other" in msg
        assert locked.faults.seen_auth and set(locked.faults.seen_auth) == {f"Bearer {TOKEN}"}
        assert other.faults.seen_auth and set(other.faults.seen_auth) == {""}
        async with connected(settings_for(tmp_path / "2", f"locked={locked.url}")) as c:
            msg = await error(c, "create_session", prompt="no token")
            assert "requires authentication" in msg and "SESSIONS_MCP_A2A__TOKENS=locked=" in msg
        async with connected(settings_for(tmp_path / "3", f"locked={locked.url}", tokens="locked=wrong")) as c:
            msg = await error(c, "create_session", prompt="bad token")
            assert "HTTP 401" in msg and "SESSIONS_MCP_A2A__TOKENS" in msg and "wrong" not in msg
            assert (await call(c, "list_sessions"))["sessions"] == []  # nothing half-created


async def test_agent_speaking_only_a2a_0_3(tmp_path: Path) -> None:
    with serving(v03=True) as agent:
        async with connected(settings_for(tmp_path, f"old={agent.url}", poll_max_s=0.2)) as c:
            r = await call(c, "create_session", prompt="ask in 0.3", timeout_s=10)
            assert r["status"] == "needs_input" and r["pending"]["text"] == "which colour?"
            done = await call(c, "send_message", session_id=r["session"]["id"], text="red", timeout_s=10)
            assert done["status"] == "idle" and "echo: red" in done["messages"][-1]["text"]
        assert agent.faults.seen_versions and set(agent.faults.seen_versions) == {"0.3"}


async def test_handles_survive_a_restart_and_the_task_is_followed_again(tmp_path: Path) -> None:
    settings = None
    with serving() as agent:
        settings = settings_for(tmp_path, f"helper={agent.url}")
        async with connected(settings) as c:
            r = await call(c, "create_session", prompt="slow across restarts", wait=False)
            sid = r["session"]["id"]
        async with connected(settings) as c:  # a new server process on the same store
            got = await call(c, "get_session", session_id=sid)
            assert got["status"] == "running"
            agent.behaviour.released.set()
            page = await call(c, "list_messages", session_id=sid, after=r["cursor"], wait_s=10)
            assert page["status"] == "idle"
            assert page["messages"][-1]["text"] == "done\npartial echo: slow across restarts"
            sent = await call(c, "send_message", session_id=sid, text="and again", timeout_s=10)
            assert ids(sent["messages"][0])["context_id"] == ids(r["messages"][0])["context_id"]


@pytest.mark.parametrize(
    ("prompt", "error_part"),
    [("fail now", "failed the task: boom"), ("reject this", "rejected the task: not my job"),
     ("auth please", "auth-required")],
)  # fmt: skip
async def test_failed_rejected_auth_required_map_to_failed(tmp_path: Path, prompt: str, error_part: str) -> None:
    with serving() as agent:
        async with connected(settings_for(tmp_path, f"helper={agent.url}")) as c:
            r = await call(c, "create_session", prompt=prompt, timeout_s=10)
            assert r["status"] == "failed"
            assert error_part in r["session"]["error"]
            failed = await call(c, "list_sessions", status="failed")
            assert len(failed["sessions"]) == 1


async def test_rename_and_delete_act_on_the_local_record(tmp_path: Path) -> None:
    with serving() as agent:
        agent.behaviour.released.set()
        async with connected(settings_for(tmp_path, f"helper={agent.url}")) as c:
            index = (await c.read_resource("sessions://index")).contents[0]
            assert "this server's record" in index.text  # type: ignore[union-attr]
            [info] = [b for b in json.loads(index.text)["backends"] if b["name"] == "a2a"]  # type: ignore[union-attr]
            assert info["agents"] == ["helper"]
            said = instructions(Runtime(settings_for(tmp_path / "i", f"helper={agent.url}")).service)
            assert (
                "The a2a backend's agents (create_session(backend='a2a', agent=...)): helper; default helper." in said
            )
            sid = (await call(c, "create_session", prompt="x", title="t", timeout_s=10))["session"]["id"]
            assert (await call(c, "rename_session", session_id=sid, title="new"))["title"] == "new"
            await call(c, "delete_session", session_id=sid)
            assert "unknown session" in await error(c, "get_session", session_id=sid)


async def test_doctor_checks_each_agent(tmp_path: Path) -> None:
    with serving(token=TOKEN) as locked, serving() as fine:
        agents = f"fine={fine.url},locked={locked.url},gone=http://127.0.0.1:9"
        checks = await collect(settings_for(tmp_path, agents, tokens="locked=wrong-token", timeout_s=3))
    by = {c.component: c for c in checks if c.component.startswith("a2a")}
    assert by["a2a: agent fine"].level == "ok" and "A2A 1.0 over JSONRPC" in by["a2a: agent fine"].detail
    assert by["a2a: agent fine: auth"].level == "ok"
    assert by["a2a: agent locked"].level == "ok" and "needs auth" in by["a2a: agent locked"].detail
    assert by["a2a: agent locked: auth"].level == "fail" and "401" in by["a2a: agent locked: auth"].detail
    assert by["a2a: agent gone"].level == "fail" and "cannot reach" in by["a2a: agent gone"].detail


async def test_two_sends_at_once_start_one_turn(tmp_path: Path) -> None:
    with serving() as agent:
        async with connected(settings_for(tmp_path, f"helper={agent.url}")) as c:
            sid = (await call(c, "create_session", title="race"))["session"]["id"]
            results: list[Any] = []

            async def send(text: str) -> None:
                results.append(await c.call_tool("send_message", {"session_id": sid, "text": text, "wait": False}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(send, "slow one")
                tg.start_soon(send, "slow two")
            assert sorted(r.is_error for r in results) == [False, True]
            assert "still working" in next(r for r in results if r.is_error).content[0].text
            agent.behaviour.released.set()
            page = await call(c, "list_messages", session_id=sid, roles=["assistant"], wait_s=10)
            assert len(page["messages"]) == 1 and len(agent.behaviour.prompts) == 1
