"""Rate limiting of repeated log lines.

Under attack the same line repeats thousands of times a second (asyncio's "socket.accept() out
of system resource" traceback reached ~4.5 MB/s), filling disks and hiding everything else.
:class:`RepeatLimiter` lets the first few copies of a line through per window, drops the rest,
and says how many it dropped when the line next passes.
"""

from __future__ import annotations

import logging
import threading
import time

BURST = 5
"""Copies of one line let through per window."""
WINDOW_S = 60.0


class RepeatLimiter(logging.Filter):
    """A handler filter: at most ``burst`` records with the same origin and text per ``window_s``."""

    def __init__(self, burst: int = BURST, window_s: float = WINDOW_S, max_keys: int = 1000) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.max_keys = max_keys
        self._seen: dict[tuple[str, int, str], list[float | int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """Pass or drop ``record``; a passing record after drops notes how many were dropped."""
        first = str(record.msg).split("\n", 1)[0][:200]
        key = (record.name, record.levelno, first)
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None or now - entry[0] >= self.window_s:
                dropped = int(entry[2]) if entry is not None else 0
                if len(self._seen) >= self.max_keys:
                    self._seen.clear()
                self._seen[key] = [now, 1, 0]
                if dropped:
                    self._note(record, dropped)
                return True
            if int(entry[1]) < self.burst:
                entry[1] = int(entry[1]) + 1
                return True
            entry[2] = int(entry[2]) + 1
            return False

    @staticmethod
    def _note(record: logging.LogRecord, dropped: int) -> None:
        try:
            message = record.getMessage()
        except Exception:
            return
        record.msg, record.args = f"{message} (and {dropped} more like it in the last minute, not logged)", None


def install(logger: logging.Logger | None = None) -> None:
    """Put one :class:`RepeatLimiter` on every handler of ``logger`` (default: the root logger)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RepeatLimiter) for f in handler.filters):
            handler.addFilter(RepeatLimiter())


__all__ = ["RepeatLimiter", "install"]
