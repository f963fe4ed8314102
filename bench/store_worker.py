"""One writer process of the multi-writer benchmark: append until a deadline, report counts as JSON.

``python bench/store_worker.py DB SESSION_ID START_AT SECONDS``; START_AT is a ``time.time()``
value shared by all workers so they start together.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time


async def main(db: str, session_id: str, start_at: float, seconds: float) -> dict[str, object]:
    from sessions_mcp.models import Status
    from sessions_mcp.store.sqlite import SqliteStore

    store = SqliteStore(db)
    await store.open()
    errors: dict[str, int] = {}
    count = 0
    worst = 0.0
    await asyncio.sleep(max(0.0, start_at - time.time()))
    end = time.time() + seconds
    try:
        while time.time() < end:
            t0 = time.perf_counter()
            try:
                text = f"writer message {count}"
                await store.append_message(
                    "local", session_id, role="assistant", parts=[{"type": "text", "text": text}], text=text,
                    new_status=Status.IDLE,
                )  # fmt: skip
                count += 1
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            worst = max(worst, time.perf_counter() - t0)
    finally:
        await store.close()
    return {"count": count, "errors": errors, "worst_ms": worst * 1000}


if __name__ == "__main__":
    out = asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
    print(json.dumps(out))
