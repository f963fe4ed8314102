"""The a2a backend when the remote misbehaves: cut or garbled streams, 5xx, bad cards, unreachable
agents, agents that die mid-task, tasks that never end. Each gives a clear error naming the
setting (or recovers), and the server keeps serving."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest
from mcp import Client

from .emulators.a2a_agents import bad_card_body, serving
from .test_a2a_backend import call, connected, error, ids, settings_for

pytestmark = pytest.mark.anyio


async def still_serving(c: Client) -> None:
    assert "sessions" in await call(c, "list_sessions")


async def wait_status(c: Client, sid: str, status: str, timeout: float = 15) -> dict[str, object]:
    with anyio.fail_after(timeout):
        while True:
            got = await call(c, "get_session", session_id=sid)
            if got["status"] == status:
                return got
            await anyio.sleep(0.05)


@pytest.mark.parametrize("fault", ["cut", "garble"])
async def test_a_broken_stream_is_recovered(tmp_path: Path, fault: str) -> None:
    with serving() as agent:
        async with connected(settings_for(tmp_path, f"helper={agent.url}", poll_max_s=0.2)) as c:
            if fault == "cut":
                agent.faults.cut_stream_after = 1  # after the task event: the rest of the turn is lost
            else:
                agent.faults.garble_stream_at = 2
            r = await call(c, "create_session", prompt="slow through faults", wait=False)
            agent.behaviour.released.set()
            page = await call(c, "list_messages", session_id=r["session"]["id"], after=r["cursor"], wait_s=10)
            if not page["messages"]:
                page = await call(c, "list_messages", session_id=r["session"]["id"], after=r["cursor"], wait_s=10)
            assert page["status"] == "idle"
            assert page["messages"][-1]["text"] == "done\npartial echo: slow through faults"
            assert agent.faults.cut_stream_after == 0 and agent.faults.garble_stream_at == 0  # the fault happened


async def test_5xx_on_send_is_a_clear_error_and_transient_5xx_while_polling_is_survived(tmp_path: Path) -> None:
    with serving(streaming=False) as agent:
        async with connected(settings_for(tmp_path, f"helper={agent.url}", poll_max_s=0.2)) as c:
            agent.faults.rpc_status, agent.faults.rpc_count = 503, 100
            msg = await error(c, "create_session", prompt="hello")
            assert "HTTP 503" in msg and "helper" in msg
            await still_serving(c)
            agent.faults.rpc_count = 0
            r = await call(c, "create_session", prompt="slow but fine", wait=False)
            agent.faults.rpc_count = 2  # the next two GetTask polls fail
            agent.behaviour.released.set()
            got = await wait_status(c, r["session"]["id"], "idle")
            assert got["message_count"] == 2
            assert agent.faults.rpc_count == 0


@pytest.mark.parametrize("body", [bad_card_body(), b"<html>not a card</html>", b"[]"])
async def test_bad_card(tmp_path: Path, body: bytes) -> None:
    with serving() as agent:
        agent.faults.card_body = body
        async with connected(settings_for(tmp_path, f"helper={agent.url}")) as c:
            msg = await error(c, "create_session", prompt="hello")
            assert "agent card" in msg and "SESSIONS_MCP_A2A__AGENTS" in msg
            await still_serving(c)
            agent.faults.card_body = None
            assert (await call(c, "create_session", title="later"))["status"] == "idle"


async def test_unreachable_agent_and_bad_configuration(tmp_path: Path) -> None:
    async with connected(settings_for(tmp_path, "gone=http://127.0.0.1:9")) as c:
        msg = await error(c, "create_session", prompt="hello")
        assert "cannot reach A2A agent 'gone'" in msg and "SESSIONS_MCP_A2A__AGENTS" in msg
        await still_serving(c)
    async with connected(settings_for(tmp_path / "2", "")) as c:
        assert "SESSIONS_MCP_A2A__AGENTS is empty" in await error(c, "create_session", prompt="hello")
    async with connected(settings_for(tmp_path / "3", "a=ftp://x")) as c:
        assert "SESSIONS_MCP_A2A__AGENTS" in await error(c, "create_session", prompt="hello")
    async with connected(settings_for(tmp_path / "4", "a=http://x", tokens="b=t")) as c:
        msg = await error(c, "create_session", prompt="hello")
        assert "SESSIONS_MCP_A2A__TOKENS names agent 'b'" in msg


async def test_an_agent_that_dies_mid_task_fails_the_session(tmp_path: Path) -> None:
    with serving(streaming=False) as agent:
        async with connected(settings_for(tmp_path, f"helper={agent.url}", poll_max_s=0.2, timeout_s=2)) as c:
            r = await call(c, "create_session", prompt="slow and doomed", wait=False)
            agent.stop()
            got = await wait_status(c, r["session"]["id"], "failed", timeout=30)
            assert "cannot reach A2A agent 'helper'" in str(got["error"])
            await still_serving(c)


async def test_a_task_that_never_ends(tmp_path: Path) -> None:
    with serving() as agent:
        async with connected(settings_for(tmp_path, f"helper={agent.url}", task_timeout_s=1)) as c:
            r = await call(c, "create_session", prompt="slow forever", timeout_s=10)
            assert r["status"] == "failed"
            assert "SESSIONS_MCP_A2A__TASK_TIMEOUT_S" in r["session"]["error"]
            assert agent.behaviour.cancelled == [ids(r["messages"][0])["task_id"]]
            await still_serving(c)


async def test_an_agent_that_never_answers(tmp_path: Path) -> None:
    with serving() as agent:
        agent.faults.hang = threading.Event()
        agent.faults.hang.set()
        async with connected(settings_for(tmp_path, f"helper={agent.url}", timeout_s=1)) as c:
            msg = await error(c, "create_session", prompt="hello?")
            assert "did not answer within SESSIONS_MCP_A2A__TIMEOUT_S (1s)" in msg
            assert (await call(c, "list_sessions"))["sessions"] == []  # nothing half-created
            agent.faults.hang.clear()
            assert (await call(c, "create_session", prompt="now", timeout_s=10))["status"] == "idle"
