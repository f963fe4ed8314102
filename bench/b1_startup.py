"""Budget 1: stdio cold start to the first ``initialize`` answer, and what importing costs."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from lib import PY, Budget, Figure, Report, Spread, bare_server_argv, ours_argv, ratios, server_env

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}},
}


def cold_start(argv: list[str], env: dict[str, str]) -> float:
    """Spawn -> first ``initialize`` answer on stdout, in ms."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write((json.dumps(INIT) + "\n").encode())
    p.stdin.flush()
    line = p.stdout.readline()
    elapsed = (time.perf_counter() - t0) * 1000
    p.stdin.close()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    reply = json.loads(line)
    if reply.get("id") != 1 or "result" not in reply:
        raise RuntimeError(f"bad initialize answer from {argv}: {line[:200]!r}")
    return elapsed


def import_wall(module: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([PY, "-c", f"import {module}"], check=True, capture_output=True)
    return (time.perf_counter() - t0) * 1000


def modules_of(module: str) -> set[str]:
    code = f"import sys, json; import {module}; print(json.dumps(sorted(sys.modules)))"
    return set(json.loads(subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True).stdout))


def run(report: Report, smoke: bool) -> None:
    rounds = 1 if smoke else 9
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        env_ours = server_env(Path(tmp) / "sessions.db")
        env_bare = server_env()
        # warm .pyc files and the page cache, and create + migrate the database once: a client
        # restarting the server finds an existing database
        cold_start(ours_argv(), env_ours)
        if not smoke:
            cold_start(bare_server_argv(), env_bare)
        ours: list[float] = []
        bare: list[float] = []
        for _ in range(rounds):
            bare.append(cold_start(bare_server_argv(), env_bare))
            ours.append(cold_start(ours_argv(), env_ours))
    r = ratios(ours, bare)
    report.figure(
        Figure(
            "1.cold_start",
            "stdio: spawn `python -m sessions_mcp` → first `initialize` answer (existing database)",
            Spread.of(ours, " ms"),
            Spread.of(bare, " ms"),
            "bare MCPServer, one echo tool",
            r,
        )
    )
    report.budget(Budget("1", "stdio cold start → first initialize", r.median, 1.15, "<=", "×",
                         f"median of {rounds} paired ratios; ours {Spread.of(ours).median:.0f} ms vs bare {Spread.of(bare).median:.0f} ms"))  # fmt: skip

    if not smoke:
        imp_ours: list[float] = []
        imp_bare: list[float] = []
        for _ in range(5):
            imp_bare.append(import_wall("mcp.server.mcpserver"))
            imp_ours.append(import_wall("sessions_mcp.server"))
        report.figure(
            Figure(
                "1.import",
                "`python -c 'import sessions_mcp.server'` wall time",
                Spread.of(imp_ours, " ms"),
                Spread.of(imp_bare, " ms"),
                "`import mcp.server.mcpserver`",
                ratios(imp_ours, imp_bare),
            )
        )
    if smoke:
        return  # tests/test_import_cost.py asserts what gets imported
    base = modules_of("mcp.server.mcpserver")
    server = modules_of("sessions_mcp.server")
    pkg = modules_of("sessions_mcp")
    extra = sorted({m.split(".")[0] for m in server - base} - {"sessions_mcp"})
    ours_mods = sorted(m for m in server if m.startswith("sessions_mcp"))
    report.notes.append(
        f"`import sessions_mcp` loads {len(pkg)} modules in all (no SDK, no driver); `import sessions_mcp.server` "
        f"loads {len(server)} vs {len(base)} for `import mcp.server.mcpserver`; the extra top-level packages are "
        f"{', '.join(extra) or 'none'}; our own modules: {', '.join(m.removeprefix('sessions_mcp.') for m in ours_mods)}."
    )
