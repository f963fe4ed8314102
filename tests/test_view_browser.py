"""The live session view in a real browser (Debian chromium), inside a host built on ext-apps' AppBridge.

Each test serves the real HTTP app (uvicorn on 127.0.0.1), opens the view the way an MCP Apps host
does (tool call -> ``_meta.ui.resourceUri`` -> ``resources/read`` -> double-iframe sandbox) and
acts on it while another MCP client (the Python SDK over streamable HTTP) writes to the session.
A pending request comes from real agents: Claude Code over ACP asking permission (against the mock
model, :mod:`tests.acp_rig`) and an A2A agent asking a question (:mod:`tests.emulators.a2a_agents`).
Screenshots go to ``.tools/artifacts/view/``.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from sessions_mcp.models import Status
from sessions_mcp.principal import LOCAL_PRINCIPAL
from sessions_mcp.settings import Settings

from .acp_rig import rig_for
from .browser_support import Browser, Served, browser, build_host, check_installed, serve_with_host
from .emulators.a2a_agents import serving
from .http_support import mcp_client, ok

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def host_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    check_installed()
    return build_host(tmp_path_factory.mktemp("host"))


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    async with browser() as b:
        yield b


@asynccontextmanager
async def session_view(settings: Settings, host_js: Path, chromium: Browser) -> AsyncIterator[tuple[Served, Client]]:
    """The server with the test host, another MCP client, and the page closed before the server stops."""
    async with serve_with_host(settings, host_js) as srv, mcp_client(srv.url, "http", "legacy") as other:
        try:
            yield srv, other
        finally:
            await chromium.do("close")


async def open_view(chromium: Browser, srv: Served, tool: str, args: dict[str, Any], **kw: Any) -> dict[str, Any]:
    url = srv.page(tool, args, kw.pop("theme", "light"), kw.pop("era", "legacy"))
    opened = await chromium.do("open", url=url, **kw)
    await chromium.do("wait_text", selector="#view", text="backend")
    return opened


def csp_violations(log: dict[str, Any]) -> list[str]:
    return [m["text"] for m in log["console"] if "Content Security Policy" in m["text"] or "Refused to" in m["text"]]


@pytest.mark.parametrize("era", ["legacy", "auto"])
async def test_the_view_renders_a_session_and_loads_nothing_from_outside(
    make_settings: Callable[..., Settings], host_js: Path, chromium: Browser, era: str
) -> None:
    async with session_view(make_settings(), host_js, chromium) as (srv, other):
        created = await ok(
            other, "create_session", title="Fix the flaky test", prompt="Please look at test_x", agent="none"
        )
        sid = created["session"]["id"]
        opened = await open_view(chromium, srv, "get_session", {"session_id": sid}, era=era)
        assert opened["mime"] == "text/html;profile=mcp-app"
        assert opened["protocolVersion"] == ("2026-07-28" if era == "auto" else "2025-11-25")
        assert opened["csp"] == {"connectDomains": [], "resourceDomains": [], "frameDomains": [], "baseUriDomains": []}
        await chromium.do("wait_text", selector="#transcript", text="Please look at test_x")
        assert await chromium.do("text", selector="#title") == "Fix the flaky test"
        assert await chromium.do("text", selector="#status") == "awaiting reply"
        assert await chromium.do("text", selector="#backend") == "local"
        assert await chromium.do("text", selector="#agent") == "mailbox"
        assert await chromium.do("count", selector="a, [href], [src]") == 0  # no links, nothing fetched by URL
        await chromium.screenshot("renders-light")

        log = await chromium.do("log")
        assert [r for r in log["requests"] if r["frame"] == "view"] == []
        outside = [r["url"] for r in log["requests"] if not r["url"].startswith((srv.url + "/", srv.sandbox + "/"))]
        assert outside == []
        assert csp_violations(log) == []
        assert log["errors"] == []

        # the watch works: a load the view attempts is blocked by the CSP and shows up in the log
        blocked = await chromium.do(
            "in_view", expr=f"fetch({srv.url + '/healthz'!r}).then(() => 'loaded', (e) => 'blocked: ' + e)"
        )
        assert blocked.startswith("blocked"), blocked
        log = await chromium.do("log")
        assert csp_violations(log), log["console"]


async def test_other_clients_messages_appear_live_and_a_follow_up_lands_once(
    make_settings: Callable[..., Settings], host_js: Path, chromium: Browser
) -> None:
    async with session_view(make_settings(), host_js, chromium) as (srv, other):
        # the host itself calls create_session, as a chat host does for the model
        opened = await open_view(
            chromium, srv, "create_session", {"title": "mailbox", "prompt": "What is 6 x 7?", "agent": "none"}
        )
        sid = opened["result"]["structuredContent"]["session"]["id"]
        await chromium.do("wait_text", selector="#transcript", text="What is 6 x 7?")
        # wait until the view's long-poll is in flight, then answer from the other client
        with anyio.fail_after(10):
            while not await chromium.do(
                "host",
                expr="window.hostState.calls.some(c => c.name === 'list_messages' && !c.done && c.arguments.wait_s > 0)",
            ):
                await anyio.sleep(0.05)
        await ok(other, "send_message", session_id=sid, role="assistant", text="It is 42.")
        took_ms = await chromium.do("wait_text", selector="#transcript", text="It is 42.", timeout=5000)
        print(f"a message from another client appeared in the view after {took_ms} ms")
        assert await chromium.do("text", selector="#status") == "idle"

        await chromium.do("fill", selector="#message", value="Now show your working, please.")
        await chromium.do("dblclick", selector="#send")  # a double click still sends once
        await chromium.do("wait_text", selector="#transcript", text="Now show your working, please.")
        await chromium.do("wait_text", selector="#status", text="awaiting reply")
        page = await ok(other, "list_messages", session_id=sid, roles=["user"])
        assert [m["text"] for m in page["messages"]].count("Now show your working, please.") == 1
        sends = await chromium.do("host", expr="window.hostState.calls.filter(c => c.name === 'send_message').length")
        assert sends == 1
        assert await chromium.do("count", selector="#transcript .msg") == 3
        await chromium.screenshot("follow-up")

        # torn down, the view stops polling: its open long-poll ends and no new call follows a new message
        await chromium.do("host", expr="window.hostTeardown()")
        with anyio.fail_after(10):
            while await chromium.do("host", expr="window.hostState.calls.some(c => !c.done)"):
                await anyio.sleep(0.05)
        calls = await chromium.do("host", expr="window.hostState.calls.length")
        await ok(other, "send_message", session_id=sid, role="assistant", text="after teardown")
        await anyio.sleep(1.5)  # a window in which a still-polling view would have called again
        assert await chromium.do("host", expr="window.hostState.calls.length") == calls


async def test_tool_calls_fold_and_text_appears_while_the_agent_works(
    make_settings: Callable[..., Settings], host_js: Path, chromium: Browser
) -> None:
    async with session_view(make_settings(), host_js, chromium) as (srv, other):
        created = await ok(other, "create_session", title="agent at work", prompt="Read setup.cfg", agent="none")
        sid = created["session"]["id"]
        native = sid.split(":", 1)[1]
        local = srv.runtime.service.backends["local"]
        await open_view(chromium, srv, "get_session", {"session_id": sid})
        await chromium.do("wait_text", selector="#transcript", text="Read setup.cfg")

        # what an agent runner writes while its turn runs (the backend API the runners use)
        await local.set_status(LOCAL_PRINCIPAL, native, Status.RUNNING)
        await local.append_agent_message(
            LOCAL_PRINCIPAL, native, parts=[{"type": "text", "text": "Let me read the file first."}],
            text="Let me read the file first.", status=Status.RUNNING,
        )  # fmt: skip
        await chromium.do("wait_text", selector="#transcript", text="Let me read the file first.")
        await chromium.do("wait_text", selector="#status", text="running")
        assert await chromium.do("visible", selector="#working")
        assert await chromium.do("visible", selector="#interrupt")

        tool_parts: list[dict[str, Any]] = [
            {"type": "thinking", "text": "The config is probably in setup.cfg."},
            {"type": "tool_call", "id": "call-1", "name": "read_file", "input": {"path": "setup.cfg"}},
            {"type": "tool_result", "tool_call_id": "call-1", "output": "[metadata]\nname = demo\n" * 30},
            {"type": "tool_call", "id": "call-2", "name": "run_tests", "input": {"k": "flaky"}},
            {"type": "tool_result", "tool_call_id": "call-2", "output": "1 failed", "is_error": True},
        ]
        await local.append_agent_message(
            LOCAL_PRINCIPAL, native, role="tool", parts=tool_parts, text="tool calls", status=Status.RUNNING
        )
        await chromium.do("wait_text", selector="#transcript", text="run_tests")
        lines = await chromium.do("texts", selector="details.tool > summary")
        assert len(lines) == 2, lines
        assert "read_file" in lines[0] and "completed" in lines[0]
        assert "run_tests" in lines[1] and "failed" in lines[1]
        assert all("\n" not in line for line in lines)
        assert await chromium.do("count", selector="details.tool[open], details.thinking[open]") == 0
        assert not await chromium.do("visible", selector="details.tool pre.io")  # folded: output hidden
        assert not await chromium.do("visible", selector="details.thinking p")  # thinking collapsed
        await chromium.do("click", selector="details.tool > summary", text="read_file")
        assert await chromium.do("visible", selector="details.tool pre.io")

        # a change of status alone (no message) still shows while the agent works (short polls)
        await local.set_status(LOCAL_PRINCIPAL, native, Status.FAILED, error="the agent crashed")
        await chromium.do("wait_text", selector="#status", text="failed", timeout=10000)
        await chromium.do("wait_text", selector="#session-error", text="the agent crashed")

        await local.append_agent_message(
            LOCAL_PRINCIPAL, native, parts=[{"type": "text", "text": "The test fails on a timezone."}],
            text="The test fails on a timezone.", status=Status.IDLE,
        )  # fmt: skip
        await chromium.do("wait_text", selector="#transcript", text="The test fails on a timezone.")
        await chromium.do("wait_text", selector="#status", text="idle")
        assert not await chromium.do("visible", selector="#working")
        await chromium.do("click", selector="details.tool > summary", text="read_file")  # fold it again
        assert not await chromium.do("visible", selector="details.tool pre.io")
        await chromium.screenshot("tool-calls")  # docs/session-view.png is this one


AGENT = """
import os, sys, time
print("Starting on it: reading the repository.", flush=True)
while True:
    time.sleep(0.1)
"""


async def test_interrupt_stops_a_running_turn(
    make_settings: Callable[..., Settings], host_js: Path, chromium: Browser, tmp_path: Path
) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    settings = make_settings(
        local={"agent": "command", "agent_input": "none", "agent_command": shlex.join([sys.executable, str(agent)])}
    )
    async with session_view(settings, host_js, chromium) as (srv, other):
        opened = await open_view(
            chromium, srv, "create_session", {"title": "long job", "prompt": "Refactor everything", "wait": False}
        )
        sid = opened["result"]["structuredContent"]["session"]["id"]
        await chromium.do("wait_text", selector="#status", text="running")
        assert await chromium.do("text", selector="#agent") == "command"
        await chromium.screenshot("running")
        await chromium.do("click", selector="#interrupt")
        await chromium.do("wait_text", selector="#status", text="idle", timeout=15000)
        await chromium.do("wait_text", selector="#transcript", text="[interrupted]", timeout=15000)
        assert "Starting on it" in await chromium.do("text", selector="#transcript")
        s = await ok(other, "get_session", session_id=sid)
        assert s["status"] == "idle"
        assert (
            await chromium.do("host", expr="window.hostState.calls.filter(c => c.name === 'interrupt_session').length")
            == 1
        )


async def test_dark_theme_from_the_host_and_a_narrow_width(
    make_settings: Callable[..., Settings], host_js: Path, chromium: Browser
) -> None:
    async with session_view(make_settings(), host_js, chromium) as (srv, other):
        text = "A long line without spaces: " + "x" * 300
        created = await ok(
            other, "create_session", title="A rather long session title that has to wrap", prompt=text, agent="none"
        )
        sid = created["session"]["id"]
        await open_view(chromium, srv, "get_session", {"session_id": sid}, theme="dark", width=340)
        await chromium.do("wait_text", selector="#transcript", text="A long line")
        assert await chromium.do("attr", selector="html", name="data-theme") == "dark"
        dark_bg = await chromium.do("style", selector="body", property="background-color")
        dark_fg = await chromium.do("style", selector="body", property="color")
        assert luminance(dark_bg) < 0.2 < 0.6 < luminance(dark_fg), (dark_bg, dark_fg)
        scroll, client = await chromium.do("scroll_width")
        assert scroll <= client, "the view overflows a narrow host"
        assert await chromium.do("visible", selector="#send")
        await chromium.screenshot("dark-narrow")

        await chromium.do("host", expr="window.hostTheme('light')")
        await chromium.do("wait_text", selector="#status", text="awaiting reply")
        with anyio.fail_after(5):
            while await chromium.do("attr", selector="html", name="data-theme") != "light":
                await anyio.sleep(0.05)
        light_bg = await chromium.do("style", selector="body", property="background-color")
        assert luminance(light_bg) > 0.8, light_bg


def luminance(css: str) -> float:
    """Relative luminance (0..1) of an ``rgb(...)``/``rgba(...)`` colour."""
    nums = [float(x) for x in css[css.index("(") + 1 : css.index(")")].replace(",", " ").split()[:3]]

    def lin(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in nums)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


async def until_status(client: Client, sid: str, status: str, timeout: float = 120) -> dict[str, Any]:
    """``get_session`` once the session has ``status`` (polled; fails after ``timeout`` seconds)."""
    with anyio.fail_after(timeout):
        while True:
            s = await ok(client, "get_session", session_id=sid)
            if s["status"] == status:
                return s
            assert s["status"] in ("running", "needs_input"), s
            await anyio.sleep(0.1)


@pytest.mark.hosts
@pytest.mark.timeout(300)
async def test_a_real_agent_asks_permission_and_a_click_on_an_option_answers_it(
    make_settings: Callable[..., Settings],
    host_js: Path,
    chromium: Browser,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Claude Code over ACP (against the mock model) asks before it runs a shell command."""
    with rig_for("claude", tmp_path, monkeypatch, make_settings) as rig:
        work = rig.home.work
        async with session_view(rig.settings(input_timeout_s=60), host_js, chromium) as (srv, other):
            created = await ok(
                other, "create_session", title="write a file", agent="claude", workdir=str(work),
                prompt="WRITE allowed.txt please", wait=False,
            )  # fmt: skip
            sid = created["session"]["id"]
            asked = await until_status(other, sid, "needs_input")
            pending = asked["pending"]
            assert pending["kind"] == "permission" and pending["options"], pending

            await open_view(chromium, srv, "get_session", {"session_id": sid})
            await chromium.do("wait_text", selector="#status", text="needs input")
            assert await chromium.do("visible", selector="#pending")
            assert await chromium.do("text", selector="#pending-text") == pending["text"]
            labels = [o["label"] for o in pending["options"]]
            assert await chromium.do("texts", selector="#pending-options button") == labels
            assert not await chromium.do("visible", selector="#answer-form")  # options, no free text
            await chromium.do("wait_text", selector="#transcript", text="WRITE allowed.txt please")
            await chromium.screenshot("needs-input")

            allow = next(o for o in pending["options"] if o["kind"] == "allow_once")
            button = f'#pending-options button[data-option="{allow["id"]}"]'
            assert await chromium.do("text", selector=button) == allow["label"]
            await chromium.do("dblclick", selector=button)  # a double click still answers once
            await chromium.do("wait_text", selector="#transcript", text="WROTE-DONE", timeout=60000)
            await chromium.do("wait_text", selector="#status", text="idle")
            assert not await chromium.do("visible", selector="#pending")
            tools = await chromium.do("texts", selector="details.tool > summary")
            assert any("echo hi > allowed.txt" in t and "completed" in t for t in tools), tools
            assert (work / "allowed.txt").read_text().strip() == "hi"
            done = await ok(other, "get_session", session_id=sid)
            assert done["status"] == "idle" and done["pending"] is None, done
            page = await ok(other, "list_messages", session_id=sid, roles=["user"])
            assert [m["text"] for m in page["messages"]] == ["WRITE allowed.txt please", allow["label"]]
            sends = await chromium.do("host", expr="window.hostState.calls.filter(c => c.name === 'send_message')")
            assert len(sends) == 1, sends


async def test_a_real_a2a_agent_asks_a_question_and_the_answer_box_answers_it(
    make_settings: Callable[..., Settings], host_js: Path, chromium: Browser
) -> None:
    """An A2A agent (a2a-sdk's server) goes input-required; the answer continues its task."""
    with serving() as agent:
        settings = make_settings(backends=["a2a"], a2a={"agents": f"helper={agent.url}", "timeout_s": 10})
        async with session_view(settings, host_js, chromium) as (srv, other):
            created = await ok(other, "create_session", title="a question", prompt="ask me something", wait=False)
            sid = created["session"]["id"]
            asked = await until_status(other, sid, "needs_input", timeout=30)
            pending = asked["pending"]
            assert pending["kind"] == "question" and pending["options"] is None, pending

            await open_view(chromium, srv, "get_session", {"session_id": sid})
            await chromium.do("wait_text", selector="#status", text="needs input")
            assert await chromium.do("text", selector="#backend") == "a2a"
            assert await chromium.do("text", selector="#pending-text") == pending["text"] == "which colour?"
            assert await chromium.do("count", selector="#pending-options button") == 0
            assert not await chromium.do("visible", selector="#pending-options")
            assert await chromium.do("visible", selector="#answer-form")
            await chromium.screenshot("question")

            await chromium.do("fill", selector="#answer", value="blue, please")
            await chromium.do("dblclick", selector="#answer-send")  # a double click still answers once
            await chromium.do("wait_text", selector="#transcript", text="echo: blue, please", timeout=30000)
            await chromium.do("wait_text", selector="#status", text="idle")
            assert not await chromium.do("visible", selector="#pending")
            done = await ok(other, "get_session", session_id=sid)
            assert done["status"] == "idle" and done["pending"] is None, done
            page = await ok(other, "list_messages", session_id=sid, roles=["user"])
            assert [m["text"] for m in page["messages"]] == ["ask me something", "blue, please"]
            assert agent.behaviour.prompts == ["ask me something", "blue, please"]
            sends = await chromium.do("host", expr="window.hostState.calls.filter(c => c.name === 'send_message')")
            assert len(sends) == 1, sends


REPLIER = """
import os, sys, time
turn, prompt, go = sys.argv[1], sys.argv[2], sys.argv[3]
print(f"turn {turn}: working on {prompt!r}", flush=True)
if turn == "1":
    while not os.path.exists(go):
        time.sleep(0.02)
print(f"turn {turn}: done", flush=True)
"""


async def test_a_real_agent_turn_and_a_follow_up_show_up_live(
    make_settings: Callable[..., Settings], host_js: Path, chromium: Browser, tmp_path: Path
) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(REPLIER)
    go = tmp_path / "go"
    command = shlex.join([sys.executable, str(agent), "{turn}", "{prompt}", str(go)])
    settings = make_settings(local={"agent": "command", "agent_input": "none", "agent_command": command})
    async with session_view(settings, host_js, chromium) as (srv, other):
        opened = await open_view(
            chromium, srv, "create_session", {"title": "real agent", "prompt": "count files", "wait": False}
        )
        sid = opened["result"]["structuredContent"]["session"]["id"]
        await chromium.do("wait_text", selector="#status", text="running")
        assert await chromium.do("visible", selector="#working")
        go.touch()  # let the agent finish its first turn
        await chromium.do("wait_text", selector="#transcript", text="turn 1: done", timeout=15000)
        await chromium.do("wait_text", selector="#status", text="idle")
        assert not await chromium.do("visible", selector="#working")

        await chromium.do("fill", selector="#message", value="and the tests?")
        await chromium.do("click", selector="#send")
        await chromium.do("wait_text", selector="#transcript", text="turn 2: done", timeout=15000)
        await chromium.do("wait_text", selector="#status", text="idle")
        page = await ok(other, "list_messages", session_id=sid)
        assert [(m["role"], m["text"].splitlines()[-1]) for m in page["messages"]] == [
            ("user", "count files"),
            ("assistant", "turn 1: done"),
            ("user", "and the tests?"),
            ("assistant", "turn 2: done"),
        ]
        assert await chromium.do("count", selector="#transcript .msg") == 4
