"""Start-up pauses the cyclic garbage collector and always turns it back on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Run in a fresh interpreter: the collector's state is process-wide.
PROBE = """
import gc, json, sys
from sessions_mcp import cli, startup
seen = {}
real_done = startup.done
def done():
    seen.setdefault("during", gc.isenabled())
    real_done()
    seen.setdefault("after", gc.isenabled())
startup.done = done
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, **seen, "end": gc.isenabled(), "frozen": gc.get_freeze_count()}))
"""


def _probe(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "SESSIONS_MCP_LOCAL__DB": str(tmp_path / "s.db"), "XDG_CONFIG_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], input="", capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_stdio_serving_builds_with_the_collector_off_then_freezes_and_resumes(tmp_path: Path) -> None:
    # stdin is empty: the server is built, serves until EOF and returns 0
    line = _probe(tmp_path, "--no-daemon")
    assert line.startswith('{"code": 0, "during": false, "after": true, "end": true, "frozen": ')
    assert int(line.rsplit(" ", 1)[1].rstrip("}")) > 10_000  # the start-up objects are out of later collections


def test_a_start_that_fails_still_resumes_the_collector(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("this is not toml = = =")
    env = {**os.environ, "SESSIONS_MCP_LOCAL__DB": str(tmp_path / "s.db")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, "--no-daemon", "--config", str(tmp_path / "bad.toml")],
        input="", capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith('{"code": 2, "during": false, "after": true, "end": true')


def test_other_commands_leave_the_collector_alone(tmp_path: Path) -> None:
    line = _probe(tmp_path, "ls")
    assert line == '{"code": 0, "during": true, "after": true, "end": true, "frozen": 0}'
