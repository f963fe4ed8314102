"""The coding-agent CLIs people use as MCP hosts drive sessions-mcp for real, configured from the README.

Each test starts the mock model (tests/mockllm.py), gives a real CLI (tests/clis.py, installed by
scripts/setup-clis.sh) a fresh HOME configured with the README's snippet for that host, and lets the
mock script the turn: ``create_session`` (a mailbox session), ``list_messages(wait_s=…)`` while
another MCP client answers, then ``get_session`` with an unknown id. The assertions read the mock's
request log: every tool result reached the model with the right content, in the form the host
shows (structured JSON, text, or both), and the error came back marked the way that host marks
errors. Then the host must have exited 0 and left no process behind (checked by PID).

The per-host facts asserted here are the table in docs/clients.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from sessions_mcp import hosts
from sessions_mcp.server import build_server
from sessions_mcp.settings import load_settings

from .clis import GEMINI_MODEL, CliHome, pids_with_env
from .conftest import is_running
from .http_support import ServerProcess, mcp_client
from .mockllm import Call, MockLLM, Say, Turn
from .test_docs import LOCAL_BINARY, snippets

pytestmark = [pytest.mark.hosts, pytest.mark.slow, pytest.mark.timeout(240)]

SERVER_BIN = str(Path(sys.executable).parent / "sessions-mcp")
README_URL = "http://127.0.0.1:8765/mcp"
PROMPT = "Hand the flaky-test review to another agent and wait for its answer."
PEER_TEXT = "PEER-ANSWER: the flake is a race in test_io, fixed by waiting on the event"
BAD_ID = "local:no-such-session-0000000000"
SID = re.compile(r"local:[A-Za-z0-9_-]{16,}")
CURSOR = re.compile(r"cursor\"?:\s*\"?([A-Za-z0-9_=-]{8,})")
FINAL = "MOCK_FINAL: the other agent answered"
ANSWER_AFTER_S = 1.5


@dataclass(frozen=True)
class HostCase:
    """How one CLI runs headless, and what the docs table says it does with results."""

    cli: str
    argv: Callable[[str], list[str]]
    shows: str
    """What reaches the model from a result with text and structured content: structured, text, both."""
    error: str | None
    """How the host marks a tool error: 'flag' (an is_error / error field on the wire), a regex the
    text matches, or None (nothing: only our own message says it failed)."""


CASES: dict[str, HostCase] = {
    "claude-code": HostCase(
        "claude", lambda p: ["claude", "-p", p, "--allowedTools", "mcp__sessions"], "structured", "flag"
    ),
    "codex": HostCase("codex", lambda p: ["codex", "exec", "--skip-git-repo-check", p], "structured", None),
    "gemini": HostCase("gemini", lambda p: ["gemini", "-m", GEMINI_MODEL, "-p", p], "text", "flag"),
    "qwen": HostCase("qwen", lambda p: ["qwen", p], "both", r"^MCP tool 'get_session' reported tool error"),
    "copilot": HostCase(
        "copilot",
        lambda p: ["copilot", "-p", p, "-s", "--allow-tool", "sessions", "--disable-client-telemetry"],
        "both",
        r"^MCP server 'sessions': ",
    ),
    "droid": HostCase(
        "droid",
        lambda p: ["droid", "exec", "-m", "custom:mock-model", "--auto", "high", p],
        "text",
        r"^Error: MCP tool \S+ returned an error",
    ),
}


def _sid_and_cursor(turn: Turn, _tool: Any) -> dict[str, Any]:
    first = turn.results[0].text
    sid, cursor = SID.search(first), CURSOR.search(first)
    assert sid and cursor, first
    return {"session_id": sid.group(0), "after": cursor.group(1), "wait_s": 30}


SCRIPT = [
    Call("create_session", {"prompt": "Review the flaky test in test_io.py", "title": "from a host"}),
    Call("list_messages", _sid_and_cursor),
    Call("get_session", {"session_id": BAD_ID}),
    Say(FINAL),
]


# --- configuring a host from the README ---------------------------------------------------------------


def host_path(home: CliHome, host: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where hosts.py says ``host`` keeps its servers, resolved with this HOME's environment."""
    with monkeypatch.context() as m:
        for key in ("HOME", "CODEX_HOME", "XDG_CONFIG_HOME"):
            if key in home.env:
                m.setenv(key, home.env[key])
            else:
                m.delenv(key, raising=False)
        return hosts.get_host(host).path()


def apply_snippet(home: CliHome, host: str, name: str, monkeypatch: pytest.MonkeyPatch, url: str = "") -> str:
    """Configure ``home`` with README snippet ``name``: run it (bash) or merge it into the host's file."""
    lang, code = snippets()[name]
    code = code.replace(LOCAL_BINARY, SERVER_BIN).replace(README_URL, url or README_URL)
    if lang == "bash":
        done = home.run(["bash", "-c", code], timeout=60)
        assert done.returncode == 0, done.output
    else:
        path = host_path(home, host, monkeypatch)
        if lang == "json":
            home.write_json(str(path.relative_to(home.home)), json.loads(code))
        else:
            home.append_text(str(path.relative_to(home.home)), code)
    return code


# --- the other MCP client that answers -------------------------------------------------------------------


async def _answer(client: Client) -> str:
    listed = await client.call_tool("list_sessions", {"status": "awaiting_reply"})
    assert listed.structured_content is not None, listed
    [session] = listed.structured_content["sessions"]
    sent = await client.call_tool("send_message", {"session_id": session["id"], "role": "assistant", "text": PEER_TEXT})
    assert not sent.is_error, sent
    return session["id"]


class Peer:
    """Answers the mailbox session once the model has asked the host to wait in list_messages."""

    def __init__(self, mock: MockLLM, home: CliHome, connect: Callable[[], Any]) -> None:
        self.mock, self.home, self.connect = mock, home, connect
        self.session_id = ""
        self.server_pids: list[int] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.mock.wait_for(lambda e: e.get("action", {}).get("tool", "").endswith("list_messages"), timeout=150)
            self.server_pids = [p for p in pids_with_env("HOME", str(self.home.home)) if _is_server(p)]
            # Nothing outside the server shows that its list_messages has started waiting; every host
            # calls the tool within ~0.3 s of the model's answer (probe logs), so answering 1.5 s
            # later lands inside the long-poll rather than before it.
            threading.Event().wait(ANSWER_AFTER_S)

            async def go() -> None:
                async with self.connect() as client:
                    self.session_id = await _answer(client)

            asyncio.run(go())
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> Peer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)


def _is_server(pid: int) -> bool:
    try:
        return b"sessions-mcp" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


# --- the checks on what reached the model ----------------------------------------------------------------


def _marked(case: HostCase, item: dict[str, Any]) -> bool:
    if case.error is None:
        return False
    if case.error == "flag":
        return bool(item["is_error"])
    return re.search(case.error, item["text"]) is not None


def _forms(text: str) -> set[str]:
    found = set()
    if re.search(r"\{\"(session|messages)\":", text):
        found.add("structured")
    if re.search(r"(^|\n)(created local:|\d+ message\(s\); status:)", text):
        found.add("text")
    return found


def check_results(case: HostCase, mock: MockLLM, peer: Peer) -> None:
    [created] = mock.results("create_session")
    [listed] = mock.results("list_messages")
    [failed] = mock.results("get_session")
    assert peer.session_id and peer.session_id in created["text"], created
    assert "awaiting_reply" in created["text"]
    assert PEER_TEXT in listed["text"], listed
    expected = {"structured": {"structured"}, "text": {"text"}, "both": {"structured", "text"}}[case.shows]
    assert _forms(created["text"]) == expected, created["text"]
    assert _forms(listed["text"]) == expected, listed["text"]
    assert "unknown session" in failed["text"] and BAD_ID in failed["text"], failed
    assert "list_sessions" in failed["text"], "the fix-it hint reached the model"
    assert not _marked(case, created) and not _marked(case, listed)
    if case.error is not None:
        assert _marked(case, failed), f"{case.cli} did not mark the error as documented: {failed}"
    else:
        assert failed["is_error"] is None and not _marked(case, failed)


def stop_daemons_of(home: CliHome) -> list[int]:
    """The per-user daemon a host's stdio server attached to outlives the host by design (it exits
    when idle); stop it by PID, so the checks see only what the host itself started and left."""
    daemons = [p for p in pids_with_env("HOME", str(home.home)) if _is_daemon(p)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in daemons:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while any(is_running(p) for p in daemons) and time.monotonic() < deadline:
            time.sleep(0.02)
    return daemons


def _is_daemon(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "sessions-mcpd"
    except OSError:
        return False


def check_exit(case: HostCase, home: CliHome, done: Any, peer: Peer, expect_server: bool) -> None:
    assert not done.timed_out and done.returncode == 0, done.output
    assert FINAL in done.stdout, done.output
    if peer.error is not None:
        raise peer.error
    daemons = stop_daemons_of(home)
    if expect_server:
        assert peer.server_pids, f"no sessions-mcp process with HOME={home.home} while {case.cli} ran"
    left = [p for p in peer.server_pids if p not in daemons and is_running(p)]
    assert not left, "the host left its server running"
    assert home.leftover_pids() == [], f"{case.cli} left processes behind"


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[MockLLM]:
    with MockLLM(SCRIPT, log_path=tmp_path / "mock.jsonl") as m:
        yield m


@pytest.mark.parametrize("host", list(CASES))
def test_host_over_stdio(host: str, mock: MockLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[host]
    home = CliHome.create(case.cli, tmp_path / "home", mock.url)
    apply_snippet(home, host, f"{host}-local", monkeypatch)
    entries = hosts.configured(hosts.get_host(host), host_path(home, host, monkeypatch))
    assert [n for n, _ in entries] == ["sessions"], "hosts.py finds what the snippet configured"
    db = home.home / ".local" / "share" / "sessions-mcp" / "sessions.db"  # the server's default, under HOME

    def connect() -> Any:
        return Client(build_server(load_settings(None, local={"db": str(db)})))

    with Peer(mock, home, connect) as peer:
        done = home.run(case.argv(PROMPT), timeout=180)
    check_exit(case, home, done, peer, expect_server=True)
    check_results(case, mock, peer)


@pytest.mark.parametrize("host", list(CASES))
def test_host_over_http_with_a_token(host: str, mock: MockLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = CASES[host]
    token = secrets.token_urlsafe(24)
    home = CliHome.create(case.cli, tmp_path / "home", mock.url, {"SESSIONS_MCP_TOKEN": token})
    with ServerProcess(tmp_path / "http.db", env={"SESSIONS_MCP_HTTP__TOKENS": f"hostuser={token}"}) as server:
        base = server.started()
        apply_snippet(home, host, f"{host}-http", monkeypatch, url=f"{base}/mcp")
        saved = host_path(home, host, monkeypatch).read_text()
        assert token not in saved or host != "codex", "Codex reads the token from the environment"
        [(name, entry)] = hosts.configured(hosts.get_host(host), host_path(home, host, monkeypatch))
        assert name == "sessions" and f"{base}/mcp" in json.dumps(entry)

        def connect() -> Any:
            return mcp_client(base, "http", "auto", token=token)

        with Peer(mock, home, connect) as peer:
            done = home.run(case.argv(PROMPT), timeout=180)
        check_exit(case, home, done, peer, expect_server=False)
        check_results(case, mock, peer)
        assert server.terminate() == 0  # the server requires the token: every call above carried it


CANNOT_SET = {"codex": {"required", "default_tools_approval_mode", "startup_timeout_sec"}}


@pytest.mark.parametrize("host", list(CASES))
def test_the_hosts_own_add_command_writes_what_setup_writes(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = CliHome.create(CASES[host].cli, tmp_path / "home", "http://127.0.0.1:9")
    apply_snippet(home, host, "claude-code" if host == "claude-code" else f"{host}-add", monkeypatch)
    [(name, entry)] = hosts.configured(hosts.get_host(host), host_path(home, host, monkeypatch))
    expected = hosts.get_host(host).entry(hosts.Launch())
    skipped = CANNOT_SET.get(host, set())
    assert name == "sessions"
    assert {k: v for k, v in expected.items() if k not in skipped} == {
        k: entry.get(k) for k in expected if k not in skipped
    }


@pytest.mark.parametrize("host", [h for h in CASES if h != "codex"])  # Codex's HTTP test already runs setup's output
def test_setup_over_http_keeps_the_token_in_the_environment(
    host: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``setup --url --token-env`` writes ``${VAR}``, never the token; the host expands it when it starts."""
    case = CASES[host]
    token = secrets.token_urlsafe(24)
    with MockLLM([Call("list_sessions", {}), Say(FINAL)]) as mock:
        home = CliHome.create(case.cli, tmp_path / "home", mock.url, {"SESSIONS_MCP_TOKEN": token})
        with ServerProcess(tmp_path / "http.db", env={"SESSIONS_MCP_HTTP__TOKENS": f"hostuser={token}"}) as server:
            base = server.started()
            setup = home.run([SERVER_BIN, "setup", host, "--url", f"{base}/mcp", "--token-env", "SESSIONS_MCP_TOKEN"])
            assert setup.returncode == 0, setup.output
            written = host_path(home, host, monkeypatch).read_text()
            assert "${SESSIONS_MCP_TOKEN}" in written and token not in written
            done = home.run(case.argv(PROMPT), timeout=120)
            assert server.terminate() == 0
        assert done.returncode == 0 and FINAL in done.stdout, done.output
        [listed] = mock.results("list_sessions")
        assert "no sessions" in listed["text"] or '"sessions":[]' in listed["text"], listed
        assert not _marked(case, listed)
    assert home.leftover_pids() == []
