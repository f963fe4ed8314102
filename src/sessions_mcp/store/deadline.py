"""A caller's own time limit for the store writes it makes (a context variable).

A write waits for another process's lock at most one busy timeout; a call with a shorter
``timeout_s`` (``send_message(timeout_s=5)``) should not wait longer than that either. The
service sets :func:`writes_within` around a call's writes; the SQLite engine reads
:func:`bound` when a write starts (worker threads see the caller's context).
"""

from __future__ import annotations

import time
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar

MIN_WAIT_S = 1.0
"""Even ``timeout_s=0`` (do not wait for a reply) lets its write wait this long for the lock."""

_deadline: ContextVar[float | None] = ContextVar("sessions_mcp_write_deadline", default=None)


@contextmanager
def writes_within(seconds: float) -> Generator[None]:
    """Store writes made inside wait for locks until ``seconds`` (at least :data:`MIN_WAIT_S`) from now."""
    token = _deadline.set(time.monotonic() + max(seconds, MIN_WAIT_S))
    try:
        yield
    finally:
        _deadline.reset(token)


def bound(deadline: float) -> float:
    """``deadline`` (monotonic), or the caller's earlier one."""
    mine = _deadline.get()
    return deadline if mine is None else min(deadline, mine)


__all__ = ["bound", "writes_within"]
