"""``sessions-mcp doctor`` against healthy and broken configurations (real SQLite files, real CLI)."""

from __future__ import annotations

import io
import socket
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from sessions_mcp.cli import main
from sessions_mcp.diagnostics import Check
from sessions_mcp.doctor import render, run_doctor
from sessions_mcp.server import Runtime
from sessions_mcp.settings import Settings


def doctor(settings: Settings) -> tuple[int, str]:
    out = io.StringIO()
    code = run_doctor(settings, out=out)
    return code, out.getvalue()


def populate(settings: Settings) -> str:
    async def go() -> str:
        rt = Runtime(settings)
        async with rt.running():
            result = await rt.service.create_session(
                "local", prompt="hello", title="t", backend=None, model=None, system=None,
                wait=False, timeout_s=1, idempotency_key=None,
            )  # fmt: skip
            return result.session.id

    return anyio.run(go)


def line(output: str, component: str) -> str:
    """The table line of one check with its wrapped continuation and fix lines, white space folded
    (wrapping depends on the width and on how long the temporary paths are)."""
    lines = output.splitlines()
    for i, text in enumerate(lines):
        if text[6:].startswith(component + " ") or text[6:].rstrip() == component:
            following: list[str] = []
            for t in lines[i + 1 :]:
                if not t.startswith(" " * 8):
                    break
                following.append(t)
            return " ".join(" ".join([text, *following]).split())
    raise AssertionError(f"no {component!r} line in:\n{output}")


def test_healthy_store(make_settings: Callable[..., Settings], db_path: Path) -> None:
    settings = make_settings()
    populate(settings)
    code, out = doctor(settings)
    assert code == 0, out
    assert str(db_path) in out
    assert line(out, "store: schema").startswith("ok")
    assert "current" in line(out, "store: schema")
    assert "1 session(s), 1 message(s)" in line(out, "store: integrity")
    assert "write-ahead log" in line(out, "store: size")
    assert line(out, "store: lock").startswith("ok")
    assert "0 failure(s)" in out and "FAIL" not in out


def test_missing_store_is_fine_and_not_created(make_settings: Callable[..., Settings], db_path: Path) -> None:
    code, out = doctor(make_settings())
    assert code == 0, out
    assert "not created yet" in out
    assert not db_path.exists(), "the doctor must not create the database"


def test_unwritable_path(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, out = doctor(make_settings(local={"db": str(blocker / "sub" / "sessions.db")}))
    assert code == 1, out
    found = line(out, "store: folder")
    assert found.startswith("FAIL") and "not writable" in found
    assert "fix: create" in found and "SESSIONS_MCP_LOCAL__DB" in found


def test_corrupt_file(make_settings: Callable[..., Settings], db_path: Path) -> None:
    db_path.write_bytes(b"this is not a database, just some bytes " * 200)
    code, out = doctor(make_settings())
    assert code == 1, out
    found = line(out, "store: file")
    assert found.startswith("FAIL") and "not a SQLite database" in found
    assert "move it aside" in found
    assert db_path.read_bytes().startswith(b"this is not a database"), "the doctor must not touch the file"


def test_foreign_sqlite_file(make_settings: Callable[..., Settings], db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE recipes (name TEXT)")
    code, out = doctor(make_settings())
    assert code == 1
    assert "not a sessions-mcp database (it has tables recipes)" in out


def test_newer_schema(make_settings: Callable[..., Settings], db_path: Path) -> None:
    settings = make_settings()
    populate(settings)
    with sqlite3.connect(db_path) as conn:
        conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_from_the_future', 0)")
    code, out = doctor(settings)
    assert code == 1, out
    found = line(out, "store: schema")
    assert found.startswith("FAIL") and "newer sessions-mcp" in found and "9999_from_the_future" in found
    assert "fix: upgrade sessions-mcp" in found


def test_locked_store_is_a_warning(make_settings: Callable[..., Settings], db_path: Path) -> None:
    settings = make_settings()
    populate(settings)
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        code, out = doctor(settings)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 0, out
    found = line(out, "store: lock")
    assert found.startswith("warn") and "holds the write lock" in found and "fuser" in found


def test_factory_without_key_fails_with_the_fix(make_settings: Callable[..., Settings]) -> None:
    code, out = doctor(make_settings(backends=["local", "factory"]))
    assert code == 1, out
    assert "FACTORY_API_KEY" in out
    flat = " ".join(out.split())
    assert line(out, "factory: API key").startswith("FAIL")
    assert "fix:" in flat and "export FACTORY_API_KEY" in flat


def test_unreachable_factory_never_prints_the_key(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    secret = "fk-this-is-a-very-secret-key-0123456789"
    monkeypatch.setenv("FACTORY_API_KEY", secret)
    monkeypatch.setenv("SESSIONS_MCP_FACTORY__BASE_URL", f"http://127.0.0.1:{port}")
    code, out = doctor(make_settings(backends=["local", "factory"]))
    assert code == 1, out
    assert secret not in out and secret[:12] not in out
    assert "factory" in out and "not reachable" in out


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.db"
    assert main(["doctor", "--db", str(good)]) == 0
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00garbage" * 1000)
    assert main(["doctor", "--db", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "sessions-mcp" in out and "doctor" in out and "FAIL" in out


def test_render_wraps_and_summarises() -> None:
    checks = [
        Check("store", "ok", "fine"),
        Check("factory: API key", "fail", "word " * 40, "set FACTORY_API_KEY"),
        Check("store: lock", "warn", "held", "wait"),
    ]
    text = render(checks, width=60)
    assert all(len(t) <= 60 for t in text.splitlines()[:-1])
    assert "fix: set FACTORY_API_KEY" in text
    assert text.rstrip().endswith(
        "1 ok, 1 warning(s), 1 failure(s): something is broken; follow the 'fix:' lines above"
    )


def test_http_auth_is_checked_without_printing_tokens(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSIONS_MCP_HTTP__HOST", "0.0.0.0")
    monkeypatch.setenv("SESSIONS_MCP_HTTP__TOKENS_FILE", str(tmp_path / "missing-tokens"))
    code, out = doctor(make_settings())
    assert code == 1
    found = line(out, "http: auth")
    assert found.startswith("FAIL") and "SESSIONS_MCP_HTTP__TOKENS_FILE" in found

    token = "tok-" + "x7" * 16
    monkeypatch.delenv("SESSIONS_MCP_HTTP__TOKENS_FILE")
    monkeypatch.setenv("SESSIONS_MCP_HTTP__TOKENS", f"alice={token}")
    code, out = doctor(make_settings())
    assert code == 0, out
    assert line(out, "http: auth").startswith("ok") and "1 static token(s)" in out
    assert token not in out

    monkeypatch.delenv("SESSIONS_MCP_HTTP__TOKENS")
    code, out = doctor(make_settings())
    assert code == 1
    assert "refusing to serve on '0.0.0.0' without authentication" in " ".join(out.split())


def test_local_agent_settings_are_checked(make_settings: Callable[..., Settings]) -> None:
    code, out = doctor(make_settings(local={"agent": "command", "agent_command": "no-such-agent-cli -p"}))
    assert code == 1
    found = line(out, "local: agent")
    assert found.startswith("FAIL") and "'no-such-agent-cli' is not on PATH" in found

    code, out = doctor(make_settings(local={"agent": "command", "agent_command": f"{sys.executable} -c pass"}))
    assert code == 0, out
    assert line(out, "local: agent").startswith("ok")

    missing = {"agent": "command", "agent_command": f"{sys.executable} -c pass", "agent_cwd": "/no/such/folder"}
    code, out = doctor(make_settings(local=missing))
    assert code == 1
    assert line(out, "local: agent folder").startswith("FAIL")

    code, out = doctor(make_settings(local={"agent": "openai", "openai_base_url": "http://127.0.0.1:11434/v1"}))
    assert code == 1
    assert "SESSIONS_MCP_LOCAL__OPENAI_MODEL" in line(out, "local: agent")
