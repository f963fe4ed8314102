"""Run the sessions-mcp benchmarks; write JSON results and regenerate ``bench/README.md``.

    python bench/run.py                 # full run (by hand, ~10 min on 2 cores): results/latest.json + README.md
    python bench/run.py --smoke         # seconds-scale run for CI: same code paths, tiny sizes, README untouched
    python bench/run.py --only store    # some benchmarks only (results/partial.json, README untouched)

Every figure is measured in the same run as its reference and reported as a ratio, because
absolute times on shared machines drift. Exit status: 0 when every benchmark ran (budget misses
are results, not failures), 1 when one crashed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib import BENCH, Report, Unavailable, machine

BENCHMARKS: dict[str, tuple[str, str]] = {
    "startup": ("b1_startup", "1. stdio cold start and import cost"),
    "stdio": ("b2_stdio", "2. stdio tool-call latency"),
    "proxy": ("b3_proxy", "3. proxy overhead on the Factory emulator"),
    "store": ("b4_store", "4. local store: depth, durable appends, 8 writer processes"),
    "http": ("b5_http", "5. streamable HTTP, 16 concurrent clients"),
    "waiters": ("b6_waiters", "6. 1,000 waiting calls: idle CPU and wake-up latency"),
    "memory": ("b7_memory", "7. memory and task/connection counts over many calls"),
    "daemon": ("b8_daemon", "8. the per-user daemon: warm and first start, five connections' memory"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round: checks the benchmarks still work")
    p.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                   help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")  # fmt: skip
    p.add_argument("--out", type=Path, help="JSON results file (default: bench/results/latest.json for a full run)")
    p.add_argument("--readme", action="store_true",
                   help="only re-render bench/README.md from results/latest.json (e.g. after editing findings.md)")  # fmt: skip
    args = p.parse_args(argv)

    if args.readme:
        doc = json.loads((BENCH / "results" / "latest.json").read_text())
        (BENCH / "README.md").write_text(render(doc))
        print(f"table: {BENCH / 'README.md'} (from the run of {doc['date']})", file=sys.stderr)
        return 0
    full = not args.smoke and not args.only
    out: Path = args.out or BENCH / "results" / (
        "latest.json" if full else "smoke.json" if args.smoke else "partial.json"
    )
    names = args.only or list(BENCHMARKS)
    report = Report()
    info = machine()
    started = time.perf_counter()
    print(f"sessions-mcp benchmarks ({'smoke' if args.smoke else 'full'}): {', '.join(names)}", file=sys.stderr)
    for name in names:
        module_name, title = BENCHMARKS[name]
        print(f"== {title}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            module = __import__(module_name)
            fn: Callable[..., Any] = module.run
            result = fn(report, args.smoke)
            if inspect.isawaitable(result):
                asyncio.run(_await(result))
        except Unavailable as exc:
            report.notes.append(f"{title}: not run: {exc}")
            print(f"  not run: {exc}", file=sys.stderr)
        except Exception:
            report.errors.append(f"{name}: {traceback.format_exc()}")
            traceback.print_exc()
        report.timings[name] = round(time.perf_counter() - t0, 1)
    info["loadavg_end"] = os.getloadavg()
    total = time.perf_counter() - started
    doc = {
        "command": "python bench/run.py"
        + (" --smoke" if args.smoke else "")
        + "".join(f" --only {n}" for n in names if args.only),
        "mode": "smoke" if args.smoke else "full",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(total, 1),
        "machine": info,
        **report.to_json(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"results: {out} ({total:.0f} s)", file=sys.stderr)
    if full:
        (BENCH / "README.md").write_text(render(doc))
        print(f"table: {BENCH / 'README.md'}", file=sys.stderr)
    return 1 if report.errors else 0


async def _await(result: Any) -> None:
    await result


# --- README ------------------------------------------------------------------------------------

INTRO = """\
# Benchmarks

sessions-mcp measured against the bare MCP SDK and against physical limits. Every figure is
taken **in the same run as its reference** (interleaved rounds where it matters) and reported as a
ratio, because absolute times on shared machines drift. Median over repeated rounds, with the
spread (min–max) in brackets. Speed and memory are judged here, never by timed assertions in tests.

Reproduce (2 cores, ~10 minutes; nothing else heavy should run):

    .venv/bin/python bench/run.py                # writes bench/results/latest.json and this file
    .venv/bin/python bench/run.py --only store   # one benchmark (bench/results/partial.json)
    .venv/bin/python bench/run.py --smoke        # seconds; CI runs this so the benchmarks never rot

Profiling a miss: `py-spy record -p PID` on a server started by a benchmark, or `pyinstrument`
in-process (both from PyPI; not project dependencies). `bench/percall.py` drives the real HTTP app
in one process (µs per call; exact instruction counts under `valgrind --tool=callgrind`, see its
docstring) to compare two versions of the tool path.
"""

METHOD = """\
## How each figure is taken

1. **Cold start**: spawn → first `initialize` answer over stdio, measured from the parent; the
   reference is `bench/servers/bare.py` (a bare `MCPServer` with one async `echo` tool, same SDK,
   same log level). Ours is `python -m sessions_mcp`, exactly as a client starts it, against an
   existing database (the first start creates it and is not counted). 9 interleaved pairs after
   one warm-up each; the budget uses the median of the per-pair ratios. Import cost is asserted by `tests/test_import_cost.py` (which modules load,
   via `sys.modules` in a subprocess), not by time.
2. **stdio latency**: one server process each, a raw JSON-RPC client on the pipes (no SDK client
   cost in the numbers), sequential calls, 5 rounds of 400 with the kinds interleaved per round.
   The session has 100 messages of ~200 characters. The extra row compares `list_messages` with
   a bare echo returning the same number of bytes: the floor for moving that page through the SDK.
3. **Proxy overhead**: MCP `get_session` through sessions-mcp (stdio) against the Factory
   emulator on 127.0.0.1, minus a direct `httpx2` GET of the same endpoint, compared with the
   bare echo p50 + 1 ms.
4. **Store**: the big database is built with direct SQL inserts in one transaction through the
   real schema (the store runs the migrations first); pages are read through `SessionService`
   with cursors at random depths. Appends go through `SqliteStore.append_message` (WAL,
   `synchronous=FULL`); the reference is a 4 KiB `write`+`fsync` loop in the same directory.
   Eight writer processes (`bench/store_worker.py`) append to one session of one file; the run
   checks the row count, contiguous sequence numbers and `PRAGMA integrity_check`.
5. **Streamable HTTP**: sessions-mcp's HTTP app and the bare SDK app, each under uvicorn on
   127.0.0.1, driven by 16 concurrent `httpx2` clients with the stateless 2026-07-28 envelope.
6. **Waiting calls**: 1,000 sessions, one `list_messages(wait_s=300)` each, all in flight on one
   stdio server; CPU from `/proc/PID/stat` over two heartbeat periods once every call is parked on
   the change feed. Reference: the bare server holding as many `anyio.sleep` calls. Wake-up is
   timed from the `send_message(role='assistant')` call to the waiter's answer, through the same
   server and through a second sessions-mcp process on the same database. A second server then
   holds the same calls with a `progressToken` each (clients that reset timeouts on progress).
7. **Memory**: RSS from `/proc` after 1,000 calls and after 100,000 (a mix of `get_session`,
   pages, `list_sessions` and an error answer, 4 in flight), and asyncio task / fd counts from a
   `bench_stats` tool added by `bench/servers/ours.py`. Reference: the bare echo server, same
   number of calls.
8. **Daemon** (`sessions-mcp` over stdio attaches to a per-user daemon): 9 rounds of bare cold
   start, ours with no daemon running (first start) and ours again (warm start), each spawn →
   first `initialize` answer as in 1; the daemon is stopped by PID after each round. Memory: RSS
   of one in-process server after the handshake and 40 calls, against the daemon's RSS plus the
   RSS of the five processes five clients hold (the relay becomes a `/bin/sh` waiting on the
   socket once it has handed over stdin and stdout), each connection after the same calls.
"""


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _spread(s: dict[str, Any] | None) -> str:
    if not s:
        return "—"
    unit = s.get("unit", "")
    if s["n"] == 1:
        return f"{_num(s['median'])}{unit}"
    return f"{_num(s['median'])}{unit} ({_num(s['min'])}–{_num(s['max'])})"


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [INTRO, "## Budget", ""]
    lines.append(
        f"Run {doc['date']}, `{doc['command']}`, {doc['duration_s']:.0f} s, commit `{m['commit']}`. "
        f"Machine: {m['cores']} × {m['cpu']}, {m['mem_gb']} GB, Linux {m['kernel']}, "
        f"{m['filesystem']} filesystem, Python {m['python']}, mcp {m['mcp']}; load average "
        f"{m['loadavg_start'][0]:.1f} at the start, {m['loadavg_end'][0]:.1f} at the end (a shared machine)."
    )
    lines += ["", "| # | Budget | Measured | Limit | Result |", "|---|---|---|---|---|"]
    for b in doc["budgets"]:
        mark = "✅ pass" if b["passed"] else "❌ miss"
        detail = f" ({b['detail']})" if b["detail"] else ""
        lines.append(f"| {b['key']} | {b['text']} | {_num(b['measured'])}{b['unit']}{detail} | "
                     f"{b['op'].replace('<=', '≤').replace('>=', '≥')} {_num(b['limit'])}{b['unit']} | {mark} |")  # fmt: skip
    lines += ["", "## Figures", "", "| Figure | sessions-mcp | Reference | Ratio |", "|---|---|---|---|"]
    for f in doc["figures"]:
        ref = _spread(f["reference"]) + (f": {f['reference_what']}" if f["reference_what"] else "")
        lines.append(f"| **{f['key']}** {f['what']} | {_spread(f['ours'])} | {ref} | {_spread(f['ratio'])} |")
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    if doc["errors"]:
        lines += ["", "## Errors", ""] + [f"```\n{e.strip()}\n```" for e in doc["errors"]]
    findings = BENCH / "findings.md"
    if findings.is_file():
        lines += ["", findings.read_text().strip()]
    lines += ["", METHOD]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
