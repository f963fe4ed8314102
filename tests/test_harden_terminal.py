"""Terminal escape injection in ``ls``, ``show`` and ``tail`` (issue 19 item 4), with the real command."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sessions_mcp.models import Status
from sessions_mcp.server import Runtime
from sessions_mcp.settings import load_settings
from sessions_mcp.terminal import printable

from .conftest import server_command, server_env

pytestmark = pytest.mark.anyio

CLEAR = "\x1b[2J\x1b[H"
WINDOW_TITLE = "\x1b]0;pwned\x07"
CLIPBOARD = "\x1b]52;c;cm0gLXJmIH4=\x07"
LINK = "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\"
C1 = "\x9b31m\x9d0;t\x9c"
BIDI = "\u202egnp.exe\u202c\u2066x\u2069"
FORGED_ROW = "\nlocal:FORGED   idle     1s ago   1  forged row"
FORGED_TURN = "\x1b[1G\x1b[2Kassistant · 12:00:00\r\x1b[1G  LGTM, merge it"
HOSTILE = CLEAR + WINDOW_TITLE + CLIPBOARD + LINK + C1 + BIDI + "\x07\x08\x7f"

# nothing that a terminal acts on: C0 (but tab and newline), DEL, C1, bidi controls
UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


async def hostile_session(db: Path) -> str:
    settings = load_settings(None, local={"db": str(db)})
    rt = Runtime(settings)
    async with rt.running():
        created = await rt.service.create_session(
            "local", prompt="body " + HOSTILE + "\n" + FORGED_TURN, title="title " + HOSTILE + FORGED_ROW,
            backend=None, model="m" + WINDOW_TITLE, system=None, wait=False, timeout_s=1, idempotency_key=None,
        )  # fmt: skip
        native = created.session.id.partition(":")[2]
        await rt.store.append_message(
            "local", native, role="assistant",
            parts=[
                {"type": "tool_call", "id": "c1", "name": "Bash" + LINK, "input": {"command": CLIPBOARD}},
                {"type": "tool_result", "tool_call_id": "c1", "output": "ok" + CLEAR + "\n" + FORGED_TURN},
                {"type": "text", "text": "answer " + BIDI},
            ],
            text="answer", new_status=Status.IDLE,
        )  # fmt: skip
        return created.session.id


def run_cli(db: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*server_command(), *argv], env=server_env(db), capture_output=True, text=True, timeout=60, check=False
    )


def assert_inert(text: str) -> None:
    found = UNSAFE.findall(text)
    assert not found, f"raw control characters reached the terminal: {sorted(set(found))!r}"


def test_printable_shows_controls_as_escapes() -> None:
    assert printable("a\x1b[2Jb\nc\u202ed\x9b\te") == "a\\e[2Jb\\nc\\u202ed\\x9b\te"
    assert printable("plain text, ünïcödé ✓") == "plain text, ünïcödé ✓"


@pytest.mark.slow
async def test_ls_show_tail_print_hostile_titles_and_messages_inert(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    sid = await hostile_session(db)

    ls = run_cli(db, "ls")
    assert ls.returncode == 0, ls.stderr
    assert_inert(ls.stdout)
    rows = ls.stdout.splitlines()
    assert len(rows) == 2, "a newline in a title forged an extra row"
    assert rows[1].startswith(sid)

    show = run_cli(db, "show", sid)
    assert show.returncode == 0, show.stderr
    assert_inert(show.stdout)
    headers = [line for line in show.stdout.splitlines() if line.startswith(("user ·", "assistant ·"))]
    assert len(headers) == 2, f"a message body forged a turn header: {headers!r}"
    assert "LGTM, merge it" in show.stdout  # the text is still there, shown inert

    env = server_env(db)
    tail = subprocess.Popen(
        [*server_command(), "tail", sid, "-n", "5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert tail.stdout is not None
        out = b""
        deadline = time.monotonic() + 30
        while b"answer" not in out and time.monotonic() < deadline:
            if select.select([tail.stdout], [], [], 1)[0]:
                chunk = os.read(tail.stdout.fileno(), 65536)
                if not chunk:
                    break
                out += chunk
        tail.send_signal(signal.SIGINT)
        rest, err = tail.communicate(timeout=20)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(10)
    text = (out + rest).decode()
    assert "answer" in text
    assert_inert(text)
    assert_inert(err.decode())
    headers = [line for line in text.splitlines() if line.startswith(("user ·", "assistant ·"))]
    assert len(headers) == 2, headers
