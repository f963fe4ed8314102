"""Budget 3: what sessions-mcp adds in front of a remote backend (the Factory emulator).

MCP ``get_session`` through sessions-mcp minus a direct ``httpx2`` GET of the same endpoint,
against the bare SDK echo p50 + 1 ms, all in the same run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lib import (
    BENCH,
    PY,
    ROOT,
    Budget,
    Figure,
    RawStdio,
    Report,
    Spread,
    Unavailable,
    bare_server_argv,
    free_port,
    interleaved,
    ours_argv,
    pct,
    server_env,
    timed_calls,
    wait_for_port,
)


async def run(report: Report, smoke: bool) -> None:
    if not (ROOT / "tests" / "emulators" / "factory.py").is_file():
        raise Unavailable("tests/emulators/factory.py is not in this checkout")
    import httpx2

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.emulators.factory import API_KEY

    rounds, n, warm = (1, 40, 10) if smoke else (5, 300, 50)
    port = free_port()
    scratch = tempfile.mkdtemp(prefix="bench-proxy-")  # the store keeps idempotency keys for every backend
    emu = subprocess.Popen([PY, str(BENCH / "servers" / "factory_emu.py"), str(port)], stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_port("127.0.0.1", port)
        async with httpx2.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            created = await http.post("/api/v0/sessions", json={})
            created.raise_for_status()
            native = created.json()["sessionId"]
            path = f"/api/v0/sessions/{native}"

            async def direct(count: int) -> list[float]:
                out: list[float] = []
                for _ in range(count):
                    t0 = time.perf_counter()
                    r = await http.get(path)
                    r.raise_for_status()
                    r.json()
                    out.append((time.perf_counter() - t0) * 1000)
                return out

            env = server_env(None, SESSIONS_MCP_BACKENDS="factory", FACTORY_API_KEY=API_KEY,
                             SESSIONS_MCP_FACTORY__BASE_URL=base,
                             SESSIONS_MCP_LOCAL__DB=str(Path(scratch) / "idempotency.db"))  # fmt: skip
            ours = await RawStdio.start(ours_argv(), env)
            bare = await RawStdio.start(bare_server_argv(), server_env())
            try:
                args = {"session_id": f"factory:{native}"}
                await timed_calls(ours, "get_session", args, warm)
                await timed_calls(bare, "echo", {"text": "hi"}, warm)
                await direct(warm)
                mcp_p50: list[float] = []
                get_p50: list[float] = []
                echo_p50: list[float] = []
                for _ in range(rounds):
                    lat = await interleaved(
                        {
                            "mcp": lambda k: timed_calls(ours, "get_session", args, k),
                            "get": direct,
                            "echo": lambda k: timed_calls(bare, "echo", {"text": "hi"}, k),
                        },
                        n,
                    )
                    mcp_p50.append(pct(lat["mcp"], 0.5))
                    get_p50.append(pct(lat["get"], 0.5))
                    echo_p50.append(pct(lat["echo"], 0.5))
            finally:
                await ours.close()
                await bare.close()
    finally:
        emu.terminate()
        emu.wait(10)
        shutil.rmtree(scratch, ignore_errors=True)

    overhead = [m - g for m, g in zip(mcp_p50, get_p50, strict=True)]
    allowed = [e + 1.0 for e in echo_p50]
    ratio = Spread.of([o / a for o, a in zip(overhead, allowed, strict=True)], "×")
    report.figure(
        Figure(
            "3.proxy",
            f"MCP `get_session` on the factory backend (stdio) p50 {Spread.of(mcp_p50).median:.2f} ms minus a "
            f"direct `httpx2` GET of the same endpoint p50 {Spread.of(get_p50).median:.2f} ms",
            Spread.of(overhead, " ms"),
            Spread.of(allowed, " ms"),
            "bare echo p50 + 1 ms",
            ratio,
        )
    )
    report.budget(Budget("3", "proxy overhead (MCP get_session − direct GET) vs bare echo p50 + 1 ms",
                         ratio.median, 1.0, "<=", "×",
                         f"{Spread.of(overhead).median:.2f} ms vs {Spread.of(allowed).median:.2f} ms"))  # fmt: skip
