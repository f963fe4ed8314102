"""The command agent with real subprocesses: small scripts written by each test under tmp_path."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings
from sessions_mcp.store.base import pid_alive

from .conftest import client_for

pytestmark = pytest.mark.anyio

PY = sys.executable


def script(tmp_path: Path, body: str, name: str = "agent.py") -> Path:
    path = tmp_path / name
    path.write_text("import json, os, subprocess, sys, time\n" + body)
    return path


@asynccontextmanager
async def served(make_settings: Callable[..., Settings], **local: Any) -> AsyncIterator[Client]:
    local.setdefault("agent", "command")
    local.setdefault("agent_input", "none")
    async with client_for(build_server(make_settings(local=local)), "auto") as c:
        yield c


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


async def settled(client: Client, sid: str, timeout: float = 20) -> dict[str, Any]:
    """The session once its turn ended (status idle or failed)."""
    with anyio.fail_after(timeout):
        while True:
            s = await ok(client, "get_session", session_id=sid)
            if s["status"] in ("idle", "failed"):
                return s
            await anyio.sleep(0.02)


async def replies(client: Client, sid: str) -> list[str]:
    page = await ok(client, "list_messages", session_id=sid, roles=["assistant"], max_chars=1_000_000)
    return [m["text"] for m in page["messages"]]


async def appears(path: Path, timeout: float = 20) -> str:
    with anyio.fail_after(timeout):
        while not path.exists() or not path.read_text().endswith("\n"):
            await anyio.sleep(0.02)
    return path.read_text()


async def gone(pid: int, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while pid_alive(pid):
            await anyio.sleep(0.02)


async def test_stdout_streams_to_the_waiting_caller_before_the_command_ends(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    go = tmp_path / "go"
    agent = script(
        tmp_path,
        f"print('part one', flush=True)\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        f"print('part two', flush=True)\n",
    )
    seen: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")
        if message and "part one" in message:
            go.touch()  # the command only finishes once the first line reached us

    async with served(make_settings, agent_command=shlex.join([PY, str(agent)])) as c:
        r = await c.call_tool(
            "create_session", {"prompt": "stream please", "wait": True, "timeout_s": 20}, progress_callback=on_progress
        )
        assert not r.is_error, r.content
        out = r.structured_content
        assert out is not None
    assert any("part one" in m and "part two" not in m for m in seen)
    assert out["status"] == "idle"
    assert [m["text"] for m in out["messages"]] == ["stream please", "part one\npart two\n"]


async def test_transcript_on_stdin_prompt_as_last_argument_session_env_and_cwd(
    tmp_path: Path, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONS_MCP_HTTP__TOKENS", "alice=not-for-agents")
    monkeypatch.setenv("AGENT_OWN_SETTING", "kept")
    agent = script(
        tmp_path,
        "doc = json.load(sys.stdin)\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith(('SESSIONS_MCP', 'AGENT_OWN'))}\n"
        "print(json.dumps({'argv': sys.argv[1:], 'doc': doc, 'env': env, 'cwd': os.getcwd()}))\n",
    )
    work = tmp_path / "work" / "{session_id}"
    async with served(
        make_settings, agent_command=shlex.join([PY, str(agent), "--print"]), agent_input="stdin", agent_cwd=str(work)
    ) as c:
        created = await ok(c, "create_session", prompt="first question", title="t", system="be brief", timeout_s=20)
        sid = created["session"]["id"]
        native = sid.split(":", 1)[1]
        assert created["status"] == "idle"
        first = json.loads(created["messages"][1]["text"])
        second_call = await ok(c, "send_message", session_id=sid, text="second question", timeout_s=20)
        second = json.loads(second_call["messages"][1]["text"])
    assert first["argv"] == ["--print", "first question"]
    assert first["doc"]["prompt"] == "first question" and first["doc"]["turn"] == 1
    assert first["doc"]["system"] == "be brief" and first["doc"]["session_id"] == native
    assert first["cwd"] == str(tmp_path / "work" / native)
    assert first["env"]["SESSIONS_MCP_SESSION_ID"] == native
    assert first["env"]["SESSIONS_MCP_TURN"] == "1"
    assert first["env"]["AGENT_OWN_SETTING"] == "kept"
    assert "SESSIONS_MCP_HTTP__TOKENS" not in first["env"]
    assert second["argv"] == ["--print", "second question"]
    assert second["doc"]["turn"] == 2 and second["env"]["SESSIONS_MCP_TURN"] == "2"
    roles_texts = [(m["role"], m["text"]) for m in second["doc"]["messages"]]
    assert roles_texts[0] == ("user", "first question")
    assert roles_texts[1][0] == "assistant" and roles_texts[2] == ("user", "second question")
    assert first["env"]["SESSIONS_MCP_SESSION_UUID"] == second["doc"]["session_uuid"]


async def test_transcript_in_a_private_file_removed_after_the_turn(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    agent = script(
        tmp_path,
        "p = os.environ['SESSIONS_MCP_TRANSCRIPT']\n"
        "doc = json.load(open(p))\n"
        "print(json.dumps({'path': p, 'mode': oct(os.stat(p).st_mode & 0o777), 'prompt': doc['prompt'],"
        " 'stdin': sys.stdin.read()}))\n",
    )
    async with served(make_settings, agent_command=shlex.join([PY, str(agent)]), agent_input="file") as c:
        created = await ok(c, "create_session", prompt="read the file", timeout_s=20)
    got = json.loads(created["messages"][1]["text"])
    assert got["prompt"] == "read the file" and got["mode"] == "0o600" and got["stdin"] == ""
    assert not Path(got["path"]).exists()


HOSTILE = [
    "'; touch pwned; echo '",
    '"$(touch pwned)" `touch pwned` $HOME ${PATH} %PATH%',
    "a && touch pwned || touch pwned; touch pwned | cat > pwned < /dev/null &",
    "{session_id} {prompt} {{prompt}} \\ \\n\nnew line\ttab",
    "--help",
    "-",
    "ünïcødé ✓ \u202e",
]


@pytest.mark.parametrize("prompt", HOSTILE)
async def test_hostile_text_reaches_the_command_as_one_intact_argument(
    tmp_path: Path, make_settings: Callable[..., Settings], prompt: str
) -> None:
    agent = script(tmp_path, "print(json.dumps(sys.argv[1:]))\n")
    command = shlex.join([PY, str(agent), "--arg=$(touch pwned)", "; touch pwned", "x={prompt}!", "{turn}"])
    async with served(make_settings, agent_command=command, agent_cwd=str(tmp_path)) as c:
        created = await ok(c, "create_session", prompt=prompt, timeout_s=20)
    argv = json.loads(created["messages"][1]["text"])
    assert argv == ["--arg=$(touch pwned)", "; touch pwned", f"x={prompt}!", "1"]
    assert not (tmp_path / "pwned").exists()


async def test_non_zero_exit_fails_the_turn_with_the_tail_of_stderr_and_keeps_the_output(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    agent = script(
        tmp_path,
        "print('partial answer', flush=True)\n"
        "for i in range(5000): print('noise line', i, file=sys.stderr)\n"
        "print('fatal: the model refused', file=sys.stderr)\n"
        "sys.exit(3)\n",
    )
    async with served(make_settings, agent_command=shlex.join([PY, str(agent)])) as c:
        created = await ok(c, "create_session", prompt="fail please", timeout_s=20)
        sid = created["session"]["id"]
        s = await settled(c, sid)
        assert s["status"] == "failed"
        assert "status 3" in s["error"] and s["error"].endswith("fatal: the model refused")
        assert len(s["error"]) < 2200 and "noise line 0\n" not in s["error"]
        assert await replies(c, sid) == ["partial answer\n"]
        # a failed session takes the next message (and fails again, this script always does)
        again = await ok(c, "send_message", session_id=sid, text="retry", timeout_s=20)
        assert again["status"] == "failed"


async def test_exit_zero_without_output_still_ends_the_turn(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    agent = script(tmp_path, "pass\n")
    async with served(make_settings, agent_command=shlex.join([PY, str(agent)])) as c:
        created = await ok(c, "create_session", prompt="say nothing", timeout_s=20)
    assert created["status"] == "idle"
    assert created["messages"][1]["text"] == "(the agent finished without output)"


async def test_a_hang_is_killed_by_the_time_limit(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    pidfile = tmp_path / "pid"
    agent = script(
        tmp_path,
        f"open({str(pidfile)!r}, 'w').write(str(os.getpid()) + '\\n')\nprint('thinking...', flush=True)\ntime.sleep(600)\n",
    )
    async with served(make_settings, agent_command=shlex.join([PY, str(agent)]), agent_timeout_s=1.0) as c:
        created = await ok(c, "create_session", prompt="hang", wait=False)
        sid = created["session"]["id"]
        pid = int(await appears(pidfile))
        s = await settled(c, sid)
        assert s["status"] == "failed"
        assert "did not finish within 1 s" in s["error"] and "AGENT_TIMEOUT_S" in s["error"]
        assert (await replies(c, sid)) == ["thinking...\n"]
        await gone(pid, timeout=1)


async def test_interrupt_kills_the_whole_process_group(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    pids = tmp_path / "pids"
    agent = script(
        tmp_path,
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "grand = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
        "print('working', flush=True)\n"  # before the pids file: the test interrupts once that appears
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}} {{grand.pid}}\\n')\n"
        "time.sleep(600)\n",
    )
    async with served(make_settings, agent_command=shlex.join([PY, str(agent)])) as c:
        created = await ok(c, "create_session", prompt="long task", wait=False)
        sid = created["session"]["id"]
        leader, child, grand = (int(p) for p in (await appears(pids)).split())
        assert all(pid_alive(p) for p in (leader, child, grand))
        with anyio.fail_after(10):
            s = await ok(c, "interrupt_session", session_id=sid)
        assert s["status"] == "idle"
        for pid in (leader, child, grand):  # the one ignoring SIGTERM too: SIGKILL follows
            await gone(pid, timeout=1)
        assert await replies(c, sid) == ["working\n\n\n[interrupted]"]
        follow = await ok(c, "interrupt_session", session_id=sid)  # idempotent
        assert follow["status"] == "idle"


async def test_huge_output_is_cut_at_the_limit(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    agent = script(tmp_path, "chunk = 'x' * 65536\nfor _ in range(80): sys.stdout.write(chunk)\nsys.stdout.flush()\n")
    async with served(make_settings, agent_command=shlex.join([PY, str(agent)]), agent_max_output=10_000) as c:
        created = await ok(c, "create_session", prompt="flood", timeout_s=30)
        sid = created["session"]["id"]
        assert created["status"] == "idle"
        (reply,) = await replies(c, sid)
    assert reply.startswith("x" * 10_000) and "x" * 10_001 not in reply
    assert reply.endswith("[output cut at 10,000 characters (SESSIONS_MCP_LOCAL__AGENT_MAX_OUTPUT)]")


async def test_a_missing_command_fails_the_turn_with_advice(make_settings: Callable[..., Settings]) -> None:
    async with served(make_settings, agent_command="/nonexistent/agent-cli -p") as c:
        created = await ok(c, "create_session", prompt="anyone?", timeout_s=20)
        assert created["status"] == "failed"
        assert "was not found" in created["session"]["error"]
        assert "SESSIONS_MCP_LOCAL__AGENT_COMMAND" in created["session"]["error"]


async def test_a_message_sent_during_a_turn_is_answered_by_the_next_turn(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    go = tmp_path / "go"
    started = tmp_path / "started"
    agent = script(
        tmp_path,
        f"open({str(started)!r}, 'a').write(sys.argv[-1] + '\\n')\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        "print('answer to', sys.argv[-1])\n",
    )
    async with served(make_settings, agent_command=shlex.join([PY, str(agent)])) as c:
        created = await ok(c, "create_session", prompt="one", wait=False)
        sid = created["session"]["id"]
        await appears(started)
        await ok(c, "send_message", session_id=sid, text="two", wait=False)
        await ok(c, "send_message", session_id=sid, text="three", wait=False)
        go.touch()
        with anyio.fail_after(20):
            while len(await replies(c, sid)) < 2:
                await anyio.sleep(0.02)
        s = await settled(c, sid)
        texts = await replies(c, sid)
    assert s["status"] == "idle"
    assert texts == ["answer to one\n", "answer to two\n\nthree\n"]
    assert started.read_text() == "one\ntwo\n\nthree\n"


async def test_per_session_agent_choice_only_among_configured_agents(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    agent = script(tmp_path, "print('from the command agent')\n")
    async with served(make_settings, agent="none", agent_command=shlex.join([PY, str(agent)])) as c:
        mailbox = await ok(c, "create_session", prompt="mailbox by default")
        assert mailbox["status"] == "awaiting_reply" and mailbox["session"]["agent"] == "mailbox"
        chosen = await ok(c, "create_session", prompt="run it", agent="command", timeout_s=20)
        assert chosen["session"]["agent"] == "command" and chosen["status"] == "idle"
        assert chosen["messages"][1]["text"] == "from the command agent\n"
        r = await c.call_tool("create_session", {"prompt": "x", "agent": "openai"})
        assert r.is_error and "none, command" in r.content[0].text  # type: ignore[union-attr]


async def test_cancelling_the_waiting_call_does_not_stop_the_turn(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    go = tmp_path / "go"
    started = tmp_path / "started"
    agent = script(
        tmp_path,
        f"open({str(started)!r}, 'w').write('1\\n')\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
        "print('done anyway')\n",
    )
    async with served(make_settings, agent_command=shlex.join([PY, str(agent)])) as c:
        with anyio.move_on_after(0.5):  # the client gives up waiting (cancels the call)
            await c.call_tool("create_session", {"prompt": "go", "title": "cancelled", "wait": True, "timeout_s": 60})
        await appears(started)
        go.touch()
        (s,) = (await ok(c, "list_sessions", query="cancelled"))["sessions"]
        s = await settled(c, s["id"])
        assert s["status"] == "idle"
        assert await replies(c, s["id"]) == ["done anyway\n"]


def test_agent_environment_drops_server_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from sessions_mcp.backends.local.agents import TurnInput
    from sessions_mcp.backends.local.agents.command import CommandAgent
    from sessions_mcp.settings import LocalSettings

    monkeypatch.setenv("SESSIONS_MCP_FABRO__TOKEN", "secret")
    agent = CommandAgent(LocalSettings(agent="command", agent_command="cli -p"))
    turn = TurnInput(session_id="abc", turn=1, prompt="p", messages=[])
    env = agent.env_for(turn, None)
    assert "SESSIONS_MCP_FABRO__TOKEN" not in env and env["SESSIONS_MCP_SESSION_ID"] == "abc"
    assert env.get("PATH") == os.environ.get("PATH")
    assert agent.argv_for(turn) == ["cli", "-p", "p"]
