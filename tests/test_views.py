"""Terminal views (``ls``, ``show``, ``tail``) against a populated store; output captured."""

from __future__ import annotations

import io
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from sessions_mcp import views
from sessions_mcp.cli import _parser, main  # pyright: ignore[reportPrivateUsage]
from sessions_mcp.models import Status
from sessions_mcp.server import Runtime
from sessions_mcp.settings import Settings
from tests.conftest import server_env

pytestmark = pytest.mark.anyio


async def populate(settings: Settings) -> dict[str, str]:
    """A mailbox session waiting for a reply, an answered one with tool calls, and a long one."""
    rt = Runtime(settings)
    async with rt.running():
        s = rt.service
        waiting = await s.create_session(
            "local", prompt="first question: is the build green?", title="build check", backend=None,
            model=None, system=None, wait=False, timeout_s=1, idempotency_key=None,
        )  # fmt: skip
        answered = await s.create_session(
            "local", prompt="Fix the flaky test in tests/test_x.py", title="flaky test", backend=None,
            model=None, system=None, wait=False, timeout_s=1, idempotency_key=None,
        )  # fmt: skip
        native = answered.session.id.partition(":")[2]
        await rt.store.append_message(
            "local", native, role="assistant",
            parts=[
                {"type": "tool_call", "id": "c1", "name": "Bash", "input": {"command": "pytest -q"}},
                {"type": "tool_result", "tool_call_id": "c1", "output": "3 passed\n0 failed"},
                {"type": "text", "text": "Done: the race was in the fixture.\n\nAll green now."},
            ],
            text="Done: the race was in the fixture.", new_status=Status.IDLE,
        )  # fmt: skip
        other = await s.create_session(
            "alice", prompt="alice's private task", title="alice", backend=None, model=None, system=None,
            wait=False, timeout_s=1, idempotency_key=None,
        )  # fmt: skip
    return {"waiting": waiting.session.id, "answered": answered.session.id, "alice": other.session.id}


def run_view(settings: Settings, *argv: str) -> tuple[int, str]:
    args = _parser().parse_args(list(argv))
    out = io.StringIO()
    code = views.run(args.command, settings, args, out=out)
    return code, out.getvalue()


async def test_ls_lists_sessions_with_status_and_age(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()
    ids = await populate(settings)
    code, out = await anyio.to_thread.run_sync(lambda: run_view(settings, "ls"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "UPDATED", "MSGS", "TITLE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {ids["waiting"], ids["answered"]}, "alice's session is not local's"
    assert "awaiting_reply" in rows[ids["waiting"]] and "build check" in rows[ids["waiting"]]
    assert "idle" in rows[ids["answered"]] and "flaky test" in rows[ids["answered"]]
    assert " ago " in rows[ids["waiting"]]
    assert lines[1].startswith(ids["answered"]), "most recently updated first"

    code, out = await anyio.to_thread.run_sync(lambda: run_view(settings, "ls", "--status", "awaiting_reply"))
    assert [line.split()[0] for line in out.splitlines()[1:]] == [ids["waiting"]]

    code, out = await anyio.to_thread.run_sync(lambda: run_view(settings, "ls", "--principal", "alice"))
    assert [line.split()[0] for line in out.splitlines()[1:]] == [ids["alice"]]

    code, out = await anyio.to_thread.run_sync(lambda: run_view(settings, "ls", "--principal", "bob"))
    assert code == 0 and out == ""
    assert "no sessions for principal 'bob'" in capsys.readouterr().err


async def test_ls_errors_name_the_flag(
    make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings()
    code, _ = await anyio.to_thread.run_sync(lambda: run_view(settings, "ls", "--status", "done"))
    assert code == 1
    assert "--status" in capsys.readouterr().err
    code, _ = await anyio.to_thread.run_sync(lambda: run_view(settings, "ls", "--backend", "factory"))
    assert code == 1
    assert "SESSIONS_MCP_BACKENDS or --backends" in capsys.readouterr().err
    code, _ = await anyio.to_thread.run_sync(lambda: run_view(settings, "ls", "--limit", "0"))
    assert code == 1
    assert "--limit" in capsys.readouterr().err


async def test_show_renders_the_transcript(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    ids = await populate(settings)
    code, out = await anyio.to_thread.run_sync(lambda: run_view(settings, "show", ids["answered"]))
    assert code == 0
    assert out.startswith("flaky test\n")
    assert f"id       {ids['answered']}" in out
    assert "status   idle" in out
    assert "\nuser · " in out and "\nassistant · " in out
    assert "  Fix the flaky test in tests/test_x.py" in out
    assert '  > tool call Bash {"command": "pytest -q"}' in out
    assert "  > tool result:\n    3 passed\n    0 failed" in out
    assert "  Done: the race was in the fixture.\n\n  All green now." in out
    assert out.index("Fix the flaky") < out.index("tool call") < out.index("All green")


async def test_show_pages_through_long_sessions(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    rt = Runtime(settings)
    async with rt.running():
        created = await rt.service.create_session(
            "local", prompt=None, title="long", backend=None, model=None, system=None, wait=False, timeout_s=1,
            idempotency_key=None,
        )  # fmt: skip
        for i in range(230):  # more than one page of 200
            await rt.service.send_message(
                "local", session_id=created.session.id, text=f"message number {i:03d}",
                role="user" if i % 2 == 0 else "assistant", wait=False, timeout_s=1, idempotency_key=None,
            )  # fmt: skip
    code, out = await anyio.to_thread.run_sync(lambda: run_view(settings, "show", created.session.id))
    assert code == 0
    numbers = [line.strip() for line in out.splitlines() if line.strip().startswith("message number")]
    assert numbers == [f"message number {i:03d}" for i in range(230)]


async def test_show_unknown_session(make_settings: Callable[..., Settings], capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings()
    ids = await populate(settings)
    for wrong in ("local:doesnotexist0000000000", ids["alice"], "factory:abc"):
        code, out = await anyio.to_thread.run_sync(lambda w=wrong: run_view(settings, "show", w))
        assert code == 1 and out == ""
        err = capsys.readouterr().err
        assert f"no session {wrong!r}" in err and "sessions-mcp ls" in err and "--principal" in err
    code, out = await anyio.to_thread.run_sync(lambda: run_view(settings, "show", ids["alice"], "--principal", "alice"))
    assert code == 0 and "alice's private task" in out


async def test_cli_ls_and_show(
    make_settings: Callable[..., Settings], db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = await populate(make_settings())
    assert await anyio.to_thread.run_sync(lambda: main(["ls", "--db", str(db_path)])) == 0
    assert ids["answered"] in capsys.readouterr().out
    assert await anyio.to_thread.run_sync(lambda: main(["show", ids["waiting"], "--db", str(db_path)])) == 0
    assert "first question" in capsys.readouterr().out


async def test_tail_follows_messages_from_another_process(
    make_settings: Callable[..., Settings], db_path: Path
) -> None:
    settings = make_settings()
    ids = await populate(settings)
    command = [sys.executable, "-m", "sessions_mcp", "tail", ids["waiting"], "-n", "5"]
    async with await anyio.open_process(command, env=server_env(db_path)) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        seen = ""

        async def read_until(text: str) -> None:
            nonlocal seen
            with anyio.fail_after(30):
                while text not in seen:
                    try:
                        seen += (await proc.stdout.receive()).decode()  # type: ignore[union-attr]
                    except anyio.EndOfStream:
                        raise AssertionError(f"tail exited; stdout so far:\n{seen}") from None

        await read_until("first question: is the build green?")
        # the test process is "another process" for the tail subprocess
        rt = Runtime(settings)
        async with rt.running():
            await rt.service.send_message(
                "local", session_id=ids["waiting"], text="yes, the build is green (answered elsewhere)",
                role="assistant", wait=None, timeout_s=1, idempotency_key=None,
            )  # fmt: skip
        await read_until("yes, the build is green (answered elsewhere)")
        await read_until("status awaiting_reply → idle")
        assert seen.count("first question") == 1
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(15):
            code = await proc.wait()
        err = (await proc.stderr.receive()).decode()
    assert code == 130, err
    assert f"following {ids['waiting']}" in err and "Ctrl-C" in err


async def test_tail_of_an_unknown_session_exits_at_once(db_path: Path) -> None:
    command = [sys.executable, "-m", "sessions_mcp", "tail", "local:nothing0000000000000000"]
    with anyio.fail_after(30):
        result = await anyio.run_process(command, env=server_env(db_path), check=False)
    assert result.returncode == 1
    assert b"no session" in result.stderr and b"--principal" in result.stderr


class _Recorder(io.StringIO):
    """A stderr stand-in that says when something was written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = anyio.Event()

    def write(self, s: str) -> int:
        n = super().write(s)
        self.written.set()
        return n


async def test_slow_steps_say_so_and_fast_ones_stay_quiet() -> None:
    err = _Recorder()

    async def slow() -> int:
        with anyio.fail_after(10):
            await err.written.wait()  # finishes only once the progress line is out
        return 7

    assert await views.with_progress("reading the transcript", slow, after=0.01, stream=err) == 7
    assert err.getvalue() == "sessions-mcp: reading the transcript…\n"

    quiet = _Recorder()

    async def fast() -> int:
        return 1

    assert await views.with_progress("listing sessions", fast, after=5, stream=quiet) == 1
    assert quiet.getvalue() == ""

    async def broken() -> int:
        raise ValueError("bad")

    with pytest.raises(ValueError, match="bad"):  # not wrapped in an exception group
        await views.with_progress("listing sessions", broken, stream=io.StringIO())
