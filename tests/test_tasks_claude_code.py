"""Claude Code as the host of a long turn: it gets an MCP task, backgrounds it, and the result reaches the model.

Interactive Claude Code (2.1.332, installed by scripts/setup-clis.sh) runs under a pseudo-terminal
against the mock model (tests/mockllm.py), with sessions-mcp behind a small stdio relay that records
every line between them. Print mode (``-p``) leaves the tasks extension undeclared, so only the
interactive program shows how a task client behaves. The mock makes the model call
``create_session`` on the slow command agent (tests/tasks_support.py); the turn is held until the
model has answered, then released. Checked on the wire and in the mock's log: the extension was
declared, the call was answered with a task, Claude Code polled ``tasks/get`` at about
``pollIntervalMs``, the model went on meanwhile, and the final result arrived as a task notification.
"""

from __future__ import annotations

import itertools
import json
import os
import pty
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .clis import CliHome, cli_bin
from .conftest import daemon_env
from .mockllm import Call, MockLLM, Say
from .tasks_support import EXT, agent_env, release

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(240)]

RELAY = r"""
import subprocess, sys, threading, time
log = open(sys.argv[1], "a")
child = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
def up():
    for line in sys.stdin.buffer:
        log.write(f"{time.time():.3f} >> {line.decode().rstrip()}\n"); log.flush()
        child.stdin.write(line); child.stdin.flush()
    child.stdin.close()
threading.Thread(target=up, daemon=True).start()
for line in child.stdout:
    log.write(f"{time.time():.3f} << {line.decode().rstrip()}\n"); log.flush()
    sys.stdout.buffer.write(line); sys.stdout.buffer.flush()
sys.exit(child.wait())
"""
"""A stdio relay that appends ``TIME >> request`` / ``TIME << answer`` lines to a log."""


def wire(log: Path) -> list[tuple[float, str, dict[str, Any]]]:
    """The recorded JSON-RPC messages: (time, direction, message)."""
    if not log.exists():
        return []
    out: list[tuple[float, str, dict[str, Any]]] = []
    for line in log.read_text().splitlines():
        at, direction, body = line.split(" ", 2)
        out.append((float(at), direction, json.loads(body)))
    return out


class Terminal:
    """A program under a pseudo-terminal; what it draws is read and kept, never parsed."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.chdir(cwd)
            os.execve(argv[0], argv, env)
        self.screen = bytearray()

    def pump(self, until: Callable[[], bool], timeout: float) -> bool:
        """Read the screen until ``until()`` holds or ``timeout`` passes."""
        end = time.monotonic() + timeout
        while not until():
            if time.monotonic() > end:
                return False
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    self.screen.extend(os.read(self.fd, 65536))
                except OSError:
                    return until()
        return True

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self.fd)


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.kill()


def test_claude_code_backgrounds_a_long_turn_as_a_task_and_the_result_reaches_the_model(
    tmp_path: Path, terminal: list[Terminal]
) -> None:
    box = tmp_path / "box"
    box.mkdir()
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    log = tmp_path / "wire.log"
    server_env = {
        **agent_env(box),
        "SESSIONS_MCP_LOCAL__DB": str(tmp_path / "s.db"),
        "PATH": os.environ.get("PATH", ""),
        **daemon_env(),  # this test's daemon dir (stopped after the test)
    }
    script = {
        "delegate the review": [
            Call("create_session", {"prompt": "wait:cc", "title": "review"}),
            Say("MOCK_HANDED_OFF"),
        ],
        "reply to cc": [Say("MOCK_SAW_THE_RESULT")],
    }
    with MockLLM(script) as mock:
        home = CliHome.create("claude", tmp_path / "home", mock.url, extra_env={"ENABLE_TOOL_SEARCH": "false"})
        key = home.env["ANTHROPIC_API_KEY"]
        home.write_json(".claude.json", {
            "hasCompletedOnboarding": True, "theme": "dark",
            "customApiKeyResponses": {"approved": [key[-20:]], "rejected": []},
            "projects": {str(home.work): {"hasTrustDialogAccepted": True, "allowedTools": []}},
        }, merge=True)  # fmt: skip
        config = {"mcpServers": {"sessions": {
            "type": "stdio", "command": sys.executable,
            "args": [str(relay), str(log), sys.executable, "-m", "sessions_mcp"], "env": server_env,
        }}}  # fmt: skip
        (home.work / "mcp.json").write_text(json.dumps(config))
        argv = [cli_bin("claude"), "--mcp-config", str(home.work / "mcp.json"), "--strict-mcp-config",
                "--allowedTools", "mcp__sessions"]  # fmt: skip
        cc = Terminal(argv, {**home.env, "TERM": "xterm-256color"}, home.work)
        terminal.append(cc)

        def listed() -> bool:
            return any(d == "<<" and "tools" in m.get("result", {}) for _, d, m in wire(log))

        assert cc.pump(listed, 60), cc.screen[-2000:].decode(errors="replace")
        cc.pump(lambda: False, 1.0)  # let the prompt settle before typing
        cc.type("delegate the review")
        cc.pump(lambda: False, 0.3)
        cc.type("\r")

        def said(text: str) -> Callable[[], bool]:
            return lambda: any(e.get("action", {}).get("text") == text for e in mock.log)

        assert cc.pump(said("MOCK_HANDED_OFF"), 60), cc.screen[-2000:].decode(errors="replace")
        # the model went on while the turn is held: it cannot have ended before this point
        assert cc.pump(lambda: (box / "cc.started").exists(), 30)
        release(box, "cc")
        assert cc.pump(said("MOCK_SAW_THE_RESULT"), 60), cc.screen[-2000:].decode(errors="replace")

    messages = wire(log)
    calls = [m for _, d, m in messages if d == ">>" and m.get("method") == "tools/call"]
    assert len(calls) == 1
    caps = calls[0]["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    assert EXT in caps["extensions"]
    answer = next(m for _, d, m in messages if d == "<<" and m.get("id") == calls[0]["id"])
    task = answer["result"]
    assert task["resultType"] == "task" and task["status"] == "working"
    polls = [at for at, d, m in messages if d == ">>" and m.get("method") == "tasks/get"]
    assert len(polls) >= 2
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert min(gaps) >= task["pollIntervalMs"] / 1000 * 0.8, gaps  # it honours pollIntervalMs
    assert all(m["params"]["taskId"] == task["taskId"] for _, d, m in messages if m.get("method") == "tasks/get")
    # what the model got right away, and at the end
    handed = next(e for e in mock.log if e.get("action", {}).get("text") == "MOCK_HANDED_OFF")
    first = [i for i in handed["items"] if i["kind"] == "result"][-1]["text"]
    assert task["taskId"] in first and "background" in first
    final = next(e for e in mock.log if e.get("action", {}).get("text") == "MOCK_SAW_THE_RESULT")
    note = [i["text"] for i in final["items"] if i["kind"] == "user"][-1]
    assert "<task-notification>" in note and "<status>completed</status>" in note
    result = json.loads(note.split("<result>", 1)[1].split("</result>", 1)[0])
    assert result["status"] == "idle" and result["messages"][-1]["text"] == "reply to cc\n"
