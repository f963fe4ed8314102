"""The audit trail: one JSON line per tool call (SECURITY-AND-PERF E8).

Over HTTP the lines go straight to stderr (:meth:`AuditTrail.write_to`), redacted like every other
log line; the lines of the calls that end in one turn of the event loop are written together, in
one write at the end of that turn. Elsewhere they go through the ``sessions_mcp.audit`` logger,
so ``--log-level INFO`` shows them on stdio too. Writing directly skips building a ``LogRecord``
per call: an audit line costs ~3 us instead of ~12 us, which matters at a thousand calls a
second (bench budget 5).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_str
from typing import TextIO

log = logging.getLogger("sessions_mcp.audit")


@functools.lru_cache(maxsize=4096)
def session_digest(session_id: str) -> str:
    """What the audit trail records instead of a session id: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=8)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class AuditTrail:
    """Where audit lines go: a stream (HTTP serving) or the ``sessions_mcp.audit`` logger."""

    def __init__(self) -> None:
        self._stream: TextIO | None = None
        self._redact: Callable[[str], str] | None = None
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._flush_scheduled = False
        atexit.register(self.flush)

    def write_to(self, stream: TextIO | None, redact: Callable[[str], str] | None = None) -> None:
        """Write lines to ``stream`` (``None``: back to the logger), each passed through ``redact``."""
        self.flush()
        self._stream, self._redact = stream, redact

    @property
    def enabled(self) -> bool:
        """Whether a line would be written at all."""
        return self._stream is not None or log.isEnabledFor(logging.INFO)

    def tool_call(self, *, principal: str, tool: str, session_id: object, outcome: str, started: float) -> None:
        """Record one finished tool call; ``started`` is its ``time.perf_counter()`` start."""
        session = f'"{session_digest(session_id)}"' if isinstance(session_id, str) else "null"
        latency = round((time.perf_counter() - started) * 1000, 2)
        # the same bytes json.dumps gives for this dict, without building one per call
        line = (
            f'{{"event": "tool_call", "time": "{_utc_second(int(time.time()))}", '
            f'"principal": {_json_str(principal)}, "tool": {_json_str(tool)}, "session": {session}, '
            f'"outcome": {_json_str(outcome)}, "latency_ms": {latency!r}}}'
        )
        if self._redact is not None:
            line = self._redact(line)
        stream = self._stream
        if stream is None:
            log.info("%s", line)
            return
        with self._lock:
            self._pending.append(line)
            if self._flush_scheduled:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is None or loop.is_closed():
                self._flush_locked()
                return
            # the calls that end in this turn of the event loop share one write: a syscall per line
            # was the largest cost a tool call added over the bare SDK at 16 clients (bench budget 5)
            self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the lines recorded so far (done after each turn of the event loop, and at exit)."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._flush_scheduled = False
        lines, self._pending = self._pending, []
        stream = self._stream
        if not lines or stream is None:
            return
        try:
            stream.write("\n".join(lines) + "\n")
            stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: auditing must never fail a call
            pass


TRAIL = AuditTrail()
"""The process's audit trail."""
