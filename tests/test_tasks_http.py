"""MCP tasks over streamable HTTP (stateful and --stateless), raw JSON-RPC, with principals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from .http_support import ALICE, BOB, TOKENS, ServerProcess
from .tasks_support import (
    EXT,
    LEGACY,
    MODERN,
    RpcError,
    agent_env,
    final_result,
    http_peer,
    meta,
    release,
    start_task,
    started,
)

pytestmark = pytest.mark.anyio
MODES = ["stateful", "stateless"]


@pytest.fixture(params=MODES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    box = tmp_path / "box"
    box.mkdir()
    args = ["--stateless"] if request.param == "stateless" else []
    env = {**agent_env(box), "SESSIONS_MCP_HTTP__TOKENS": TOKENS}
    with ServerProcess(tmp_path / "s.db", *args, env=env) as proc:
        proc.started()
        yield proc, box
        proc.terminate()


@pytest.mark.parametrize("era", [MODERN, LEGACY])
async def test_create_poll_complete_over_http(server: tuple[ServerProcess, Path], era: str) -> None:
    proc, box = server
    async with http_peer(f"{proc.url}/mcp", era, token=ALICE) as peer:
        task = await start_task(peer, "create_session", prompt="wait:h1")
        await started(box, "h1")
        assert (await peer.call("tasks/get", {"taskId": task["taskId"]}))["status"] == "working"
        release(box, "h1")
        done, result = await final_result(peer, task["taskId"])
        assert done["status"] == "completed"
        assert result["structuredContent"]["messages"][-1]["text"] == "reply to h1\n"


@pytest.mark.parametrize("era", [MODERN, LEGACY])
async def test_another_principals_task_id_answers_like_an_unknown_one(
    server: tuple[ServerProcess, Path], era: str
) -> None:
    proc, box = server
    url = f"{proc.url}/mcp"
    async with http_peer(url, era, token=ALICE) as alice, http_peer(url, era, token=BOB) as bob:
        task = await start_task(alice, "create_session", prompt="wait:h2")
        await started(box, "h2")
        unknown = "task_" + "A" * 32
        methods = ["tasks/get", "tasks/cancel"] + (["tasks/update"] if era == MODERN else ["tasks/result"])
        for method in methods:
            answers = []
            for task_id in (task["taskId"], unknown):
                params: dict[str, Any] = {"taskId": task_id}
                if method == "tasks/update":
                    params["inputResponses"] = {"x": {"action": "accept", "content": {"answer": "y"}}}
                with pytest.raises(RpcError) as err:
                    await bob.call(method, params)
                answers.append((err.value.code, err.value.message.replace(task_id, "<id>")))
            assert answers[0] == answers[1] and answers[0][0] == -32602, (method, answers)
        if era == LEGACY:  # tasks/list: each principal sees only its own
            mine = await alice.call("tasks/list", {})
            assert [t["taskId"] for t in mine["tasks"]] == [task["taskId"]]
            assert (await bob.call("tasks/list", {}))["tasks"] == []
        # bob's attempts changed nothing: alice's task runs on and completes
        assert (await alice.call("tasks/get", {"taskId": task["taskId"]}))["status"] == "working"
        release(box, "h2")
        done, _ = await final_result(alice, task["taskId"])
        assert done["status"] == "completed"


async def test_cancel_over_http(server: tuple[ServerProcess, Path]) -> None:
    proc, box = server
    async with http_peer(f"{proc.url}/mcp", MODERN, token=ALICE) as peer:
        task = await start_task(peer, "create_session", prompt="wait:h3")
        await started(box, "h3")
        await peer.call("tasks/cancel", {"taskId": task["taskId"]})
        assert (await peer.poll(task["taskId"]))["status"] == "cancelled"


async def test_without_the_extension_the_call_blocks_over_http(server: tuple[ServerProcess, Path]) -> None:
    proc, box = server
    async with http_peer(f"{proc.url}/mcp", MODERN, tasks=False, token=ALICE) as peer:
        got: dict[str, Any] = {}

        async def call() -> None:
            got.update(await peer.tool("create_session", prompt="wait:h4", timeout_s=60))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await started(box, "h4")
            assert not got
            release(box, "h4")
        assert got["resultType"] == "complete" and got["structuredContent"]["status"] == "idle"


async def test_server_discover_advertises_the_extension(server: tuple[ServerProcess, Path]) -> None:
    proc, _ = server
    async with http_peer(f"{proc.url}/mcp", MODERN, token=ALICE) as peer:
        found = await peer.call("server/discover", {})
        assert found["capabilities"]["extensions"][EXT] == {}
    async with http_peer(f"{proc.url}/mcp", LEGACY, token=ALICE) as peer:
        tools = (await peer.call("tools/list", {}))["tools"]
        support = {t["name"]: t.get("execution", {}).get("taskSupport") for t in tools}
        assert support["create_session"] == support["send_message"] == "optional"
        assert support["list_sessions"] is None


async def listen(url: str, token: str, task_ids: list[str], out: list[dict[str, Any]], ready: anyio.Event) -> None:
    """A raw 2026 ``subscriptions/listen`` stream for ``task_ids``; collects every frame into ``out``."""
    body = {
        "jsonrpc": "2.0",
        "id": 99,
        "method": "subscriptions/listen",
        "params": {"notifications": {"taskIds": task_ids}, "_meta": meta(True)},
    }
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "subscriptions/listen",
    }
    async with (
        httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=120)) as http,
        http.stream("POST", url, json=body, headers=headers) as r,
    ):
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                out.append(json.loads(line[5:]))
                ready.set()


async def test_task_status_is_pushed_on_subscriptions_listen(tmp_path: Path) -> None:
    box = tmp_path / "box"
    box.mkdir()
    env = {**agent_env(box), "SESSIONS_MCP_HTTP__TOKENS": TOKENS}
    with ServerProcess(tmp_path / "s.db", env=env) as proc:
        url = f"{proc.url or proc.started()}/mcp"
        async with http_peer(url, MODERN, token=ALICE) as peer:
            task = await start_task(peer, "create_session", prompt="wait:h5")
            await started(box, "h5")
            mine: list[dict[str, Any]] = []
            theirs: list[dict[str, Any]] = []
            got_mine, got_theirs = anyio.Event(), anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(listen, url, ALICE, [task["taskId"]], mine, got_mine)
                tg.start_soon(listen, url, BOB, [task["taskId"]], theirs, got_theirs)
                with anyio.fail_after(20):
                    await got_mine.wait()
                    await got_theirs.wait()
                    while len(mine) < 2:  # the ack, then the task as it stands
                        await anyio.sleep(0.02)
                release(box, "h5")
                with anyio.fail_after(30):
                    while not any(m.get("params", {}).get("status") == "completed" for m in mine):
                        await anyio.sleep(0.02)
                tg.cancel_scope.cancel()
        proc.terminate()
    ack = mine[0]
    assert ack["method"] == "notifications/subscriptions/acknowledged"
    assert ack["params"]["notifications"]["taskIds"] == [task["taskId"]]
    notes = [m for m in mine[1:] if m.get("method") == "notifications/tasks"]
    assert notes[0]["params"]["status"] == "working" and notes[0]["params"]["taskId"] == task["taskId"]
    final = notes[-1]["params"]
    assert final["status"] == "completed"
    assert final["result"]["structuredContent"]["messages"][-1]["text"] == "reply to h5\n"
    assert final["_meta"]["io.modelcontextprotocol/subscriptionId"] == 99
    # bob asked for alice's task: not honoured, nothing of it sent
    assert theirs[0]["params"]["notifications"]["taskIds"] == []
    assert not [m for m in theirs if m.get("method") == "notifications/tasks"]


async def test_listening_for_tasks_needs_the_extension(server: tuple[ServerProcess, Path]) -> None:
    proc, _ = server
    async with http_peer(f"{proc.url}/mcp", MODERN, tasks=False, token=ALICE) as peer:
        with pytest.raises(RpcError) as err:
            await peer.call("subscriptions/listen", {"notifications": {"taskIds": ["task_x"]}})
        assert err.value.code == -32021
        assert err.value.data == {"requiredCapabilities": {"extensions": {EXT: {}}}}
        with pytest.raises(RpcError) as err:
            await peer.call("subscriptions/listen", {"notifications": {"taskIds": "task_x"}}, tasks=True)
        assert err.value.code == -32602
