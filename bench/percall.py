"""Per-call cost of tools through sessions-mcp's real HTTP app, in one process, for profiling.

Not a budget benchmark: it drives the app through ``httpx2.ASGITransport`` (no sockets, no
uvicorn, no second process), so the numbers include the client's own work, but they are
steady enough to compare two versions of the code. Under ``valgrind --tool=callgrind`` the
instruction counts are exact; run it twice with different ``--calls`` and subtract, so that
start-up cancels out::

    .venv/bin/python bench/percall.py                       # best-of-rounds µs per call
    valgrind --tool=callgrind .venv/bin/python bench/percall.py --only get_session --calls 100 --rounds 1
    valgrind --tool=callgrind .venv/bin/python bench/percall.py --only get_session --calls 600 --rounds 1
    # (instructions of the second run − the first) / 500 = instructions per call

``echo`` is the bare server's echo tool added to our app, so ``get_session − echo`` is what the
tool itself costs. ``--app bare`` drives the bare SDK app of bench 5 instead (``echo`` only), and
``--app client`` a no-op ASGI app that answers every call with a fixed echo result: the client's
own share, to subtract from both. Server-side instructions per call, as compared in
``findings.md`` (budget 5): ours ``get_session`` − client against bare ``echo`` − client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from b5_http import call_headers, envelope  # pyright: ignore[reportMissingImports]
from lib import seed_session  # pyright: ignore[reportMissingImports]


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["echo", "get_session", "list_messages"], action="append")
    p.add_argument("--calls", type=int, default=300, help="calls per round (default 300)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; the best is reported (default 5)")
    p.add_argument(
        "--app",
        choices=["ours", "bare", "client"],
        default="ours",
        help="ours: sessions-mcp's HTTP app (default); bare: the bare SDK app (echo only); "
        "client: a no-op app, the client's own cost",
    )
    args = p.parse_args(argv)
    if args.app != "ours":
        return await _reference(args.app, args.calls, args.rounds)

    import httpx2

    from sessions_mcp import http_app, server

    db = Path(tempfile.mkdtemp(prefix="percall-")) / "sessions.db"
    sid = "local:" + await seed_session(db, 100)
    os.environ["SESSIONS_MCP_LOCAL__DB"] = str(db)
    build = server.build_server

    def with_echo(*a: Any, **k: Any) -> Any:
        mcp = build(*a, **k)

        @mcp.tool()
        async def echo(text: str) -> str:  # pyright: ignore[reportUnusedFunction]
            """Return the text."""
            return text

        return mcp

    server.build_server = with_echo  # create_app builds the server through this name
    from sessions_mcp.settings import load_settings

    settings = load_settings()
    built = http_app.create_app(settings)
    out = sys.stdout
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - audit lines go nowhere, as in bench 5
    http_app.configure_http_logging(())
    cases = {
        "echo": ("echo", {"text": "hi"}),
        "get_session": ("get_session", {"session_id": sid}),
        "list_messages": ("list_messages", {"session_id": sid, "limit": 50}),
    }
    chosen = args.only or list(cases)
    best: dict[str, float] = {}
    async with built.runtime.running(), built.mcp.session_manager.run():
        transport = httpx2.ASGITransport(app=built.app)
        async with httpx2.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{settings.http.port}") as c:
            for _ in range(args.rounds):
                for key in chosen:
                    name, arguments = cases[key]
                    headers = call_headers(name)
                    t0 = time.perf_counter()
                    for i in range(args.calls):
                        body = json.dumps(envelope(i, name, arguments)).encode()
                        r = await c.post("/mcp", content=body, headers=headers)
                        if r.status_code != 200 or r.json()["result"].get("isError"):
                            print(f"{name} failed: {r.status_code} {r.text[:300]}", file=out)
                            return 1
                    per_call = (time.perf_counter() - t0) / args.calls * 1e6
                    best[key] = min(best.get(key, per_call), per_call)
    for key in chosen:
        print(f"{key:14s} {best[key]:8.1f} us per call (best of {args.rounds} rounds of {args.calls})", file=out)
    return 0


async def _reference(app_name: str, calls: int, rounds: int) -> int:
    """``echo`` through the bare SDK app, or through a no-op app (the client alone)."""
    import contextlib
    import runpy

    import httpx2

    reply = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "hi"}],
                        "structuredContent": {"result": "hi"}, "isError": False}}).encode()  # fmt: skip

    async def no_op(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    app: Any = no_op
    running: Any = contextlib.nullcontext()
    if app_name == "bare":
        bare = runpy.run_path(str(Path(__file__).with_name("servers") / "bare.py"))["mcp"]
        app = bare.streamable_http_app()
        running = bare.session_manager.run()
    best = float("inf")
    async with (
        running,
        httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://127.0.0.1:8765") as c,
    ):
        for _ in range(rounds):
            t0 = time.perf_counter()
            for i in range(calls):
                body = json.dumps(envelope(i, "echo", {"text": "hi"})).encode()
                r = await c.post("/mcp", content=body, headers=call_headers("echo"))
                if r.status_code != 200 or r.json()["result"].get("isError"):
                    print(f"echo failed: {r.status_code} {r.text[:300]}")
                    return 1
            best = min(best, (time.perf_counter() - t0) / calls * 1e6)
    print(f"echo ({app_name}) {best:8.1f} us per call (best of {rounds} rounds of {calls})")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
