"""Idempotency keys for write tools: a retried call with the same key returns the first result.

The record lives in the shared store (for every backend); the key also becomes the backend's
dedupe key, so a write interrupted after the backend took it is not done twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from pydantic import BaseModel

from . import limits
from .errors import IdempotencyConflict, InvalidArgument, quote
from .store.base import Store
from .store.rows import pid_alive, this_host

log = logging.getLogger(__name__)


_RUNNING: set[str] = set()
"""Ids of the keyed calls this process has under way (registered before they try to claim)."""
POLL_MAX_S = 0.25


def owner_tag(store: Store, call: str = "") -> str:
    """Who holds a claim: ``pid@host#writer`` (the writer id tells this process's stores apart),
    then ``/call`` for the one call of this process that holds it."""
    tag = f"{os.getpid()}@{this_host()}#{store.writer_id}"
    return f"{tag}/{call}" if call else tag


def owner_gone(store: Store, tag: str | None) -> bool:
    """Whether the process that claimed a key can no longer finish it.

    It is gone when it ran on this machine and its pid is dead (SIGKILL, a crash), or when it is
    this very process and the call that claimed it is not under way any more (its write failed
    and so did the release). A claim from another machine is never judged here: its staleness
    bound applies.
    """
    if not tag:
        return False
    pid_text, _, rest = tag.partition("@")
    host, _, owner = rest.rpartition("#")
    writer, _, call = owner.partition("/")
    if writer == store.writer_id:
        return call not in _RUNNING
    if host != this_host() or not pid_text.isdigit():
        return False
    return not pid_alive(int(pid_text))


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
    wait_s: float = 0.0,
) -> Any:
    """Run ``run`` once per ``key`` (``run(None)`` when there is no key) and return its result.

    ``run`` gets the backend dedupe key derived from the key. A repeat with the same key and
    parameters gets the stored result with ``replayed=True``; while the first call is still
    running, a repeat waits for it up to ``wait_s`` (the caller's ``timeout_s``) and then gets
    its result too. Other parameters raise :class:`IdempotencyConflict`, and so does a first
    call still running after ``wait_s``. A claim whose process is gone (see :func:`owner_gone`)
    is taken over at once; any claim older than ``stale_after_s`` is taken over too.
    """
    if key is None:
        return await run(None)
    if not key.strip() or len(key) > limits.IDEMPOTENCY_KEY:
        raise InvalidArgument(f"idempotency_key must be 1-{limits.IDEMPOTENCY_KEY} characters (got {len(key):,})")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    # Registered before the first claim, so a sibling call of this process that reads our claim
    # can never see it as abandoned in the moment between our claim and our run.
    call = os.urandom(8).hex()
    me = owner_tag(store, call)
    _RUNNING.add(call)
    try:
        return await _claim_and_run(store, principal, tool, key, digest, me, model, run, stale_after_s, wait_s)
    finally:
        _RUNNING.discard(call)


async def _claim_and_run(
    store: Store,
    principal: str,
    tool: str,
    key: str,
    digest: str,
    me: str,
    model: type[BaseModel],
    run: Callable[[str | None], Awaitable[BaseModel]],
    stale_after_s: float,
    wait_s: float,
) -> Any:
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        rec = await store.idem_claim(principal, tool, key, digest, stale_after_ms=int(stale_after_s * 1000), owner=me)
        if rec is None:
            break
        if rec.params_hash != digest:
            raise IdempotencyConflict(
                f"idempotency_key {quote(key)} was already used for a {tool} call with other parameters; "
                "use a new key for a new request"
            )
        if rec.state == "done" and rec.result:
            return model.model_validate_json(rec.result).model_copy(update={"replayed": True})
        if owner_gone(store, rec.result) and await store.idem_takeover(
            principal, tool, key, previous=rec.result, owner=me
        ):
            log.info("took over idempotency key of a %s call whose process is gone", tool)
            break
        if time.monotonic() + delay > deadline:
            raise IdempotencyConflict(
                f"a {tool} call with idempotency_key {quote(key)} is still in progress; retry in a few seconds"
            )
        await anyio.sleep(delay)  # the first call is writing: its result is moments away
        delay = min(delay * 2, POLL_MAX_S)
    dedupe = hashlib.sha256(f"{principal}\x1f{tool}\x1f{key}".encode()).hexdigest()
    result: BaseModel | None = None
    try:
        with anyio.CancelScope(shield=True):
            result = await run(dedupe)
    except BaseException:
        with anyio.CancelScope(shield=True):
            try:
                await store.idem_release(principal, tool, key)
            except Exception:
                # the claim stays pending; this process takes it over on the next repeat
                log.warning("could not release the idempotency key of a failed %s call", tool, exc_info=True)
        raise
    assert result is not None
    with anyio.CancelScope(shield=True):
        await store.idem_complete(principal, tool, key, result.model_dump_json())
    return result
