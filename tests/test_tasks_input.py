"""A task whose agent asks for permission: ``input_required``, answered through the task, both eras.

The agent is the ``claude`` preset (Claude Code through claude-agent-acp, scripts/setup-clis.sh)
against the mock model, whose ``WRITE <file>`` script makes the agent run a shell command that
needs permission (tests/acp_script.py). The server runs over stdio with the preset's environment.

- 2026-07-28: ``tasks/get`` shows ``input_required`` with one form elicitation whose field is a
  titled enum of the option ids; ``tasks/update`` answers it like ``send_message`` would.
- 2025-11-25: a blocked ``tasks/result`` asks the client (``elicitation/create`` tagged with the
  task), and the answer lets the turn go on to its end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from .acp_script import scenario
from .clis import CliHome
from .conftest import stop_daemons
from .mockllm import MockLLM
from .tasks_support import LEGACY, MODERN, start_task, stdio_peer

pytestmark = [pytest.mark.anyio, pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(400)]

RELATED = "io.modelcontextprotocol/related-task"


@pytest.fixture
def claude(tmp_path: Path, daemon_dir: Path) -> Iterator[tuple[CliHome, dict[str, str]]]:
    with MockLLM(scenario(), log_path=tmp_path / "mock.jsonl") as mock:
        home = CliHome.create("claude", tmp_path / "home", mock.url)
        env = {
            **home.env,
            "SESSIONS_MCP_LOCAL__AGENT_ROOTS": str(home.work),
            "SESSIONS_MCP_AGENTS__CLAUDE__PERMISSIONS": "ask",
        }
        yield home, env
        stop_daemons(daemon_dir)  # over stdio the server is the per-user daemon, which outlives its client
        assert not home.leftover_pids(), "an agent process outlived the server"


def _choices(request: dict[str, Any]) -> list[dict[str, str]]:
    assert request["method"] == "elicitation/create"
    schema = request["params"]["requestedSchema"]
    assert schema["required"] == ["answer"] and list(schema["properties"]) == ["answer"]
    return schema["properties"]["answer"]["oneOf"]


def _allow(choices: list[dict[str, str]]) -> str:
    return next(c["const"] for c in choices if "once" in c["const"] and "reject" not in c["const"])


async def test_2026_input_required_is_answered_with_tasks_update(
    tmp_path: Path, claude: tuple[CliHome, dict[str, str]]
) -> None:
    home, env = claude
    async with stdio_peer(tmp_path / "s.db", MODERN, env=env) as peer:
        task = await start_task(
            peer, "create_session", agent="claude", workdir=str(home.work), prompt="WRITE allowed.txt please"
        )
        asked = await peer.poll(task["taskId"], until=("input_required", "completed", "failed"), timeout=240)
        assert asked["status"] == "input_required", asked
        [(key, request)] = asked["inputRequests"].items()
        assert "allowed.txt" in request["params"]["message"]
        allow = _allow(_choices(request))
        # a response to a key that is not outstanding is ignored; the right one answers
        await peer.call("tasks/update", {"taskId": task["taskId"], "inputResponses": {"nope": {"action": "accept"}}})
        assert (await peer.call("tasks/get", {"taskId": task["taskId"]}))["status"] == "input_required"
        await peer.call(
            "tasks/update",
            {"taskId": task["taskId"], "inputResponses": {key: {"action": "accept", "content": {"answer": allow}}}},
        )
        done = await peer.poll(task["taskId"], timeout=240)
        assert done["status"] == "completed", done
        body = done["result"]["structuredContent"]
        assert body["status"] == "idle", body
        assert any("WROTE-DONE" in m["text"] for m in body["messages"] if m["role"] == "assistant"), body
    assert (home.work / "allowed.txt").read_text().strip() == "hi"


async def test_2025_tasks_result_asks_the_client_and_the_turn_goes_on(
    tmp_path: Path, claude: tuple[CliHome, dict[str, str]]
) -> None:
    home, env = claude
    async with stdio_peer(tmp_path / "s.db", LEGACY, env=env, elicitation=True) as peer:
        asked: list[dict[str, Any]] = []

        async def answer(request: dict[str, Any]) -> dict[str, Any]:
            asked.append(request)
            return {"action": "accept", "content": {"answer": _allow(_choices(request))}}

        peer.on_request = answer
        task = await start_task(
            peer, "create_session", agent="claude", workdir=str(home.work), prompt="WRITE allowed.txt please"
        )
        with anyio.fail_after(300):
            result = await peer.call("tasks/result", {"taskId": task["taskId"]})
        assert len(asked) == 1 and asked[0]["params"]["_meta"][RELATED] == {"taskId": task["taskId"]}
        assert result["structuredContent"]["status"] == "idle", result
        assert (await peer.call("tasks/get", {"taskId": task["taskId"]}))["status"] == "completed"
    assert (home.work / "allowed.txt").read_text().strip() == "hi"


async def test_2026_declining_the_request_rejects_it(tmp_path: Path, claude: tuple[CliHome, dict[str, str]]) -> None:
    home, env = claude
    async with stdio_peer(tmp_path / "s.db", MODERN, env=env) as peer:
        task = await start_task(
            peer, "create_session", agent="claude", workdir=str(home.work), prompt="WRITE refused.txt now"
        )
        asked = await peer.poll(task["taskId"], until=("input_required", "completed", "failed"), timeout=240)
        assert asked["status"] == "input_required", asked
        [key] = asked["inputRequests"]
        await peer.call("tasks/update", {"taskId": task["taskId"], "inputResponses": {key: {"action": "decline"}}})
        done = await peer.poll(task["taskId"], timeout=240)
        assert done["status"] == "completed" and done["result"]["structuredContent"]["status"] == "idle", done
    assert not (home.work / "refused.txt").exists()
