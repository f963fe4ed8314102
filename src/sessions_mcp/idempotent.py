"""Idempotency keys for write tools: a retried call with the same key returns the first result.

The record lives in the shared store (for every backend); the key also becomes the backend's
dedupe key, so a write interrupted after the backend took it is not done twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from pydantic import BaseModel

from .errors import IdempotencyConflict, InvalidArgument
from .store.base import Store


async def idempotent(
    store: Store,
    principal: str,
    tool: str,
    key: str | None,
    params: dict[str, Any],
    model: type[BaseModel],
    run: Callable[[str | None], Awaitable[BaseModel]],
    *,
    stale_after_s: float,
) -> Any:
    """Run ``run`` once per ``key`` (``run(None)`` when there is no key) and return its result.

    ``run`` gets the backend dedupe key derived from the key. A retry with the same key and
    parameters gets the stored result with ``replayed=True``; other parameters, or a first call
    still running, raise :class:`IdempotencyConflict`. A claim older than ``stale_after_s`` is
    taken over (its call died).
    """
    if key is None:
        return await run(None)
    if not key.strip() or len(key) > 200:
        raise InvalidArgument("idempotency_key must be 1-200 characters")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    rec = await store.idem_claim(principal, tool, key, digest, stale_after_ms=int(stale_after_s * 1000))
    if rec is not None:
        if rec.params_hash != digest:
            raise IdempotencyConflict(
                f"idempotency_key {key!r} was already used for a {tool} call with other parameters; "
                "use a new key for a new request"
            )
        if rec.state == "done" and rec.result:
            return model.model_validate_json(rec.result).model_copy(update={"replayed": True})
        raise IdempotencyConflict(
            f"a {tool} call with idempotency_key {key!r} is still in progress; retry in a few seconds"
        )
    dedupe = hashlib.sha256(f"{principal}\x1f{tool}\x1f{key}".encode()).hexdigest()
    result: BaseModel | None = None
    try:
        with anyio.CancelScope(shield=True):
            result = await run(dedupe)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await store.idem_release(principal, tool, key)
        raise
    assert result is not None
    with anyio.CancelScope(shield=True):
        await store.idem_complete(principal, tool, key, result.model_dump_json())
    return result
