"""Shared pieces of the benchmarks: statistics, /proc readers, a raw JSON-RPC stdio client, results.

Linux only (RSS, CPU time, thread and fd counts come from ``/proc``), which is what CI and the
shared machines run. Nothing here is imported by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
LEGACY_VERSION = "2025-11-25"


class Unavailable(Exception):
    """A benchmark's subject is not in this checkout (e.g. a backend not yet written)."""


# --- statistics -----------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank on sorted values."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


@dataclass
class Spread:
    """Median and spread of one figure over repeated rounds."""

    median: float
    min: float
    max: float
    n: int
    unit: str = ""
    values: list[float] = field(default_factory=list[float])
    """Every round's value, in order (the JSON keeps them; the README shows median and range)."""

    @classmethod
    def of(cls, values: Sequence[float], unit: str = "") -> Spread:
        v = [round(x, 4) for x in values]
        return cls(statistics.median(v), min(v), max(v), len(v), unit, v)

    def fmt(self, digits: int = 2) -> str:
        if self.n == 1:
            return f"{self.median:.{digits}f}{self.unit}"
        return f"{self.median:.{digits}f}{self.unit} ({self.min:.{digits}f}–{self.max:.{digits}f})"


@dataclass
class Figure:
    """One measured figure with its side-by-side reference and their ratio (per round)."""

    key: str
    what: str
    ours: Spread
    reference: Spread | None = None
    reference_what: str = ""
    ratio: Spread | None = None
    notes: str = ""


@dataclass
class Budget:
    """A budget line: a measured value against its limit."""

    key: str
    text: str
    measured: float
    limit: float
    op: str  # "<=" or ">="
    unit: str
    detail: str = ""
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = self.measured <= self.limit if self.op == "<=" else self.measured >= self.limit


@dataclass
class Report:
    """Everything one run produced."""

    figures: list[Figure] = field(default_factory=list[Figure])
    budgets: list[Budget] = field(default_factory=list[Budget])
    notes: list[str] = field(default_factory=list[str])
    errors: list[str] = field(default_factory=list[str])
    timings: dict[str, float] = field(default_factory=dict[str, float])

    def figure(self, f: Figure) -> Figure:
        self.figures.append(f)
        print(f"  {f.key}: ours {f.ours.fmt()}" + (f" ref {f.reference.fmt()}" if f.reference else "")
              + (f" ratio {f.ratio.fmt()}" if f.ratio else ""), file=sys.stderr, flush=True)  # fmt: skip
        return f

    def budget(self, b: Budget) -> Budget:
        self.budgets.append(b)
        mark = "PASS" if b.passed else "MISS"
        print(f"  [{mark}] {b.key} {b.text}: {b.measured:.3g}{b.unit} (limit {b.op} {b.limit:g}{b.unit})",
              file=sys.stderr, flush=True)  # fmt: skip
        return b

    def to_json(self) -> dict[str, Any]:
        return {
            "figures": [asdict(f) for f in self.figures],
            "budgets": [asdict(b) for b in self.budgets],
            "notes": self.notes,
            "errors": self.errors,
            "timings_s": self.timings,
        }


def ratios(ours: Sequence[float], ref: Sequence[float]) -> Spread:
    """Per-round ratio ours/ref (rounds are interleaved, so drift cancels within a round)."""
    return Spread.of([o / r for o, r in zip(ours, ref, strict=True)], "×")


# --- /proc ------------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def rss_kb(pid: int) -> int:
    """Resident set size of a process, in KiB."""
    return int(_status(pid)["VmRSS"].split()[0])


def threads(pid: int) -> int:
    """OS threads of a process."""
    return int(_status(pid)["Threads"])


def fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    fs = "unknown"
    with contextlib.suppress(Exception):
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(ROOT)], capture_output=True, text=True).stdout.strip()
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    from importlib.metadata import version

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mcp": version("mcp"),
        "filesystem": fs,
        "commit": commit,
        "loadavg_start": os.getloadavg(),
    }


# --- processes --------------------------------------------------------------------------------


def bare_server_argv(*extra: str) -> list[str]:
    """The reference: a bare MCPServer with one echo tool (``bench/servers/bare.py``)."""
    return [PY, str(BENCH / "servers" / "bare.py"), *extra]


def ours_argv() -> list[str]:
    """sessions-mcp exactly as a client starts it."""
    return [PY, "-m", "sessions_mcp"]


def ours_stats_argv() -> list[str]:
    """sessions-mcp built like the CLI does, plus a ``bench_stats`` tool (``bench/servers/ours.py``)."""
    return [PY, str(BENCH / "servers" / "ours.py")]


def server_env(db: Path | str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment: no developer configuration leaks into a measurement.

    The server runs in-process (``SESSIONS_MCP_DAEMON=off``), so its PID is the process measured;
    ``b8_daemon`` measures the daemon, in a runtime dir of its own.
    """
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "XDG_CONFIG_HOME": str(Path(os.environ.get("TMPDIR", "/tmp")) / "sessions-mcp-bench-noconfig"),
        "SESSIONS_MCP_DAEMON": "off",
    }
    if db is not None:
        env["SESSIONS_MCP_LOCAL__DB"] = str(db)
    env.update(extra)
    return env


INIT_PARAMS: dict[str, Any] = {
    "protocolVersion": LEGACY_VERSION,
    "capabilities": {},
    "clientInfo": {"name": "bench", "version": "0"},
}


class RpcError(Exception):
    """A JSON-RPC error answer."""


class RawStdio:
    """A minimal JSON-RPC client over a child's stdin/stdout (no SDK client cost in the numbers).

    Requests may be concurrent; answers are routed by id. The 2025-11-25 handshake is used,
    as today's stdio clients do.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str], *, initialize: bool = True) -> RawStdio:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
            limit=1 << 26,
        )
        client = cls(proc)
        if initialize:
            await client.request("initialize", INIT_PARAMS)
            await client.notify("notifications/initialized")
        return client

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            fut = self._pending.pop(msg.get("id", -1), None) if "id" in msg else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RpcError("server closed its stdout"))

    async def _send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
        await self.proc.stdin.drain()

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        await self._send(msg)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        rid = self._next
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        msg = await fut
        if "error" in msg:
            raise RpcError(str(msg["error"]))
        return msg["result"]

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """``tools/call``; raises on a protocol error or an ``isError`` result."""
        result = await self.request("tools/call", {"name": name, "arguments": arguments})
        if result.get("isError"):
            raise RpcError(f"{name} failed: {result.get('content')}")
        return result

    async def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def timed_calls(client: RawStdio, name: str, args: dict[str, Any], n: int) -> list[float]:
    """``n`` sequential calls; latencies in ms."""
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.call(name, args)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def interleaved(
    series: dict[str, Callable[[int], Awaitable[list[float]]]], n: int, block: int = 10
) -> dict[str, list[float]]:
    """``n`` samples of each series, taken in alternating blocks so load changes hit all alike."""
    out: dict[str, list[float]] = {k: [] for k in series}
    for _ in range(max(1, n // block)):
        for key, fn in series.items():
            out[key].extend(await fn(block))
    return out


# --- seeding the local store --------------------------------------------------------------------


def seed_text(i: int) -> str:
    """A message body of a typical size (about 200 characters)."""
    return f"message {i}: " + "the quick brown fox jumps over the lazy dog. " * 4


async def seed_session(db: Path, messages: int, *, owner: str = "local") -> str:
    """A session with ``messages`` alternating user/assistant messages, written through the store API."""
    from sessions_mcp.models import Status
    from sessions_mcp.store.sqlite import SqliteStore

    store = SqliteStore(db)
    await store.open()
    try:
        row, _ = await store.create_session(
            owner=owner, title="bench", model=None, system=None, agent=None, status=Status.IDLE
        )
        for i in range(messages):
            role = "user" if i % 2 == 0 else "assistant"
            text = seed_text(i)
            await store.append_message(
                owner, row.id, role=role, parts=[{"type": "text", "text": text}], text=text, new_status=Status.IDLE
            )
        return row.id
    finally:
        await store.close()


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Block until something accepts TCP connections on ``host:port``."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
