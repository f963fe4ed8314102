"""MCP tasks on PostgreSQL: any replica answers for a task, also after the one running it died."""

from __future__ import annotations

import signal
from pathlib import Path

import anyio
import pytest

from sessions_mcp.store.base import pid_alive

from ..http_support import ALICE, BOB, TOKENS, ServerProcess
from ..tasks_support import LEGACY, MODERN, RpcError, agent_env, final_result, http_peer, release, start_task, started

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("era", [MODERN, LEGACY])
async def test_a_second_replica_answers_for_a_task_and_its_result(pg_url: str, tmp_path: Path, era: str) -> None:
    box = tmp_path / "box"
    box.mkdir()
    env = {**agent_env(box), "SESSIONS_MCP_HTTP__TOKENS": TOKENS}
    with (
        ServerProcess(pg_url, "--stateless", env=env) as a,  # type: ignore[arg-type]
        ServerProcess(pg_url, "--stateless", env=env) as b,  # type: ignore[arg-type]
    ):
        a.started()
        b.started()
        async with (
            http_peer(f"{a.url}/mcp", era, token=ALICE) as on_a,
            http_peer(f"{b.url}/mcp", era, token=ALICE) as on_b,
            http_peer(f"{b.url}/mcp", era, token=BOB) as bob_on_b,
        ):
            task = await start_task(on_a, "create_session", prompt="wait:p1")
            await started(box, "p1")
            assert (await on_b.call("tasks/get", {"taskId": task["taskId"]}))["status"] == "working"
            with pytest.raises(RpcError) as err:
                await bob_on_b.call("tasks/get", {"taskId": task["taskId"]})
            assert err.value.code == -32602
            release(box, "p1")
            done_b, result_b = await final_result(on_b, task["taskId"])
            done_a, result_a = await final_result(on_a, task["taskId"])
            assert done_b["status"] == done_a["status"] == "completed"
            assert result_a["structuredContent"] == result_b["structuredContent"]
            assert result_b["structuredContent"]["messages"][-1]["text"] == "reply to p1\n"
        a.terminate()
        b.terminate()


async def test_when_the_replica_running_the_turn_dies_another_ends_the_task(pg_url: str, tmp_path: Path) -> None:
    box = tmp_path / "box"
    box.mkdir()
    env = {**agent_env(box), "SESSIONS_MCP_HTTP__TOKENS": TOKENS}
    with (
        ServerProcess(pg_url, env=env) as a,  # type: ignore[arg-type]
        ServerProcess(pg_url, env=env) as b,  # type: ignore[arg-type]
    ):
        a.started()
        b.started()
        async with http_peer(f"{a.url}/mcp", MODERN, token=ALICE) as on_a:
            task = await start_task(on_a, "create_session", prompt="wait:p2")
        agent = await started(box, "p2")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        with anyio.fail_after(20):
            while pid_alive(agent):
                await anyio.sleep(0.05)
        async with http_peer(f"{b.url}/mcp", MODERN, token=ALICE) as on_b:
            done = await on_b.poll(task["taskId"], timeout=60)  # b's sweep finds the dead turn
            assert done["status"] == "completed"
            assert done["result"]["structuredContent"]["status"] == "failed"
        b.terminate()
