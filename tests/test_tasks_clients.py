"""Real task clients against the real server (npm tools from scripts/setup-node-tools.sh; FAIL without them).

- the TypeScript SDK's experimental tasks client (SEP-1686, 2025-11-25) over stdio;
- the tasks extension's own requester, ``@modelcontextprotocol/ext-tasks`` (SEP-2663, 2026-07-28), over HTTP.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import anyio
import pytest

from .conftest import server_command
from .http_support import TOOLS, NodeTools, ServerProcess
from .tasks_support import agent_env, release, started

pytestmark = [pytest.mark.anyio, pytest.mark.node, pytest.mark.slow]
TOKEN = "ts-tasks-token-0123456789abcdef"


def _script(name: str) -> Path:
    """tests/clients/NAME, copied next to the npm packages so its imports resolve."""
    source = Path(__file__).resolve().parent / "clients" / name
    target = TOOLS / name
    if not target.exists() or target.read_text() != source.read_text():
        shutil.copyfile(source, target)
    return target


async def test_typescript_sdk_experimental_tasks_over_stdio(tmp_path: Path) -> None:
    node = NodeTools()
    box = tmp_path / "box"
    box.mkdir()
    env = node.env(tmp_path, SESSIONS_MCP_LOCAL__DB=str(tmp_path / "s.db"), **agent_env(box))
    cmd = [str(node.node), str(_script("ts_tasks.mjs")), *server_command()]
    out = _summary(await _run_releasing(cmd, env, box, "ts1"))
    assert out["caps"]["requests"]["tools"]["call"] == {}
    assert out["task_support"]["create_session"] == out["task_support"]["send_message"] == "optional"
    assert out["task_support"]["list_sessions"] is None and out["is_task_tool"] is True
    first = out["first"]
    assert first["seen"][0] == "created:working" and first["seen"][-1] == "status:completed"
    assert "status:working" in first["seen"]
    assert first["status"] == "idle" and first["last_text"] == "reply to ts1\n" and first["related"]
    assert out["got"] == "completed"
    assert out["cancel_answer"] == "cancelled"
    assert out["second"]["seen"][-1] == "status:cancelled" and "cancelled" in out["second"]["error"]
    assert out["listed"] == ["cancelled", "completed"]


async def test_the_extensions_requester_over_http(tmp_path: Path) -> None:
    """``@modelcontextprotocol/ext-tasks`` (SEP-2663) drives a 2026-07-28 task to its end and cancels one."""
    node = NodeTools()
    box = tmp_path / "box"
    box.mkdir()
    env = {**agent_env(box), "SESSIONS_MCP_HTTP__TOKENS": f"ts={TOKEN}"}
    with ServerProcess(tmp_path / "s.db", env=env) as server:
        url = server.started()
        cmd = [str(node.node), str(_script("ts_ext_tasks.mjs")), f"{url}/mcp"]
        r = await _run_releasing(cmd, node.env(tmp_path, MCP_TOKEN=TOKEN), box, "x1")
        server.terminate()
    out = _summary(r)
    assert out["first_kind"] == "task" and out["task_id"].startswith("task_")
    assert out["statuses"][-1] == "completed" and out["status"] == "idle"
    assert out["last_text"] == "reply to x1\n"
    assert out["second_kind"] == "task" and out["second_outcome"] == "cancelled"
    assert out["wire"] == ["tasks/cancel", "tasks/get", "tools/call", "tools/list"]


async def _run_releasing(cmd: list[str], env: dict[str, str], box: Path, name: str) -> Any:
    """Run a client to its end, letting the agent finish turn ``name`` once it began."""
    async with anyio.create_task_group() as tg:

        async def unblock() -> None:
            await started(box, name, timeout=110)
            release(box, name)

        tg.start_soon(unblock)
        with anyio.fail_after(120):
            r = await anyio.run_process(cmd, env=env, check=False)
        tg.cancel_scope.cancel()  # a client that failed early never started the turn
    return r


def _summary(r: Any) -> dict[str, Any]:
    stdout, stderr = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, f"{stdout}\n{stderr}"
    return json.loads(stdout.strip().splitlines()[-1])
