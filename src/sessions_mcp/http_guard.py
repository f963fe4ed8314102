"""Connection-level limits of the HTTP server: slow and idle clients, and descriptor exhaustion.

uvicorn closes idle keep-alive connections but never one that is still *sending* a request: a
client that trickles its headers or body, or connects and says nothing, held its connection (and
a file descriptor) forever, and 1,100 of them exhausted a 1,024-descriptor limit so that
``/healthz`` timed out. :func:`guarded_protocol` builds uvicorn's h11 protocol with two rules:

- a connection that has not delivered a whole request (headers and body) within
  ``request_timeout_s`` of starting it is closed (a response that streams for hours is fine:
  the clock stops when the request has arrived);
- at most ``max_connections`` are open, kept below the process's descriptor limit: a connection
  beyond it replaces the oldest one that is still silent or half-sent, or is closed at once when
  every open connection is serving a request, so the process never runs out of descriptors.

:class:`ConnectionStats` is what ``/healthz`` and ``doctor`` report.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

NEAR = 0.8
"""Share of a limit from which ``/healthz`` and ``doctor`` say it is near."""


def descriptor_limit() -> int:
    """The soft RLIMIT_NOFILE of this process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


ACCEPT_BACKLOG = 64
"""The listen backlog, which is also how many connections asyncio accepts in one go before the
guard sees any of them: the cap leaves this many descriptors spare on top of the reserve."""


def descriptor_reserve(limit: int) -> int:
    """Descriptors kept for everything but client connections (store, backends, agents, logs),
    plus two accept batches: a refused or evicted connection's descriptor is released only on a
    later loop turn, so under load a second batch can be accepted before the first is closed."""
    return max(64, limit // 8) + 2 * ACCEPT_BACKLOG


def connection_cap(configured: int, limit: int | None = None) -> int:
    """``configured`` connections, or fewer when the descriptor limit leaves less room."""
    fds = descriptor_limit() if limit is None else limit
    return max(8, min(configured, fds - descriptor_reserve(fds)))


def capacity_note(configured: int, limit: int | None = None) -> tuple[bool, str, str]:
    """For ``doctor``: (near, what, fix) about the connection cap under the descriptor limit."""
    fds = descriptor_limit() if limit is None else limit
    cap = connection_cap(configured, fds)
    what = f"up to {cap} connections (descriptor limit {fds}, {descriptor_reserve(fds)} kept for the rest)"
    if cap < configured * NEAR:
        fix = f"raise the descriptor limit (ulimit -n {configured + descriptor_reserve(configured * 2)}) or lower SESSIONS_MCP_HTTP__MAX_CONNECTIONS"
        return True, f"{what}: below SESSIONS_MCP_HTTP__MAX_CONNECTIONS={configured}", fix
    return False, what, ""


@dataclass
class ConnectionStats:
    """Open connections and what the guard did, for ``/healthz``."""

    limit: int
    request_timeout_s: float
    open: set[Any] = field(default_factory=set[Any])
    timed_out: int = 0
    refused: int = 0
    evicted: int = 0

    def report(self) -> dict[str, Any]:
        """The ``connections`` member of ``/healthz``."""
        return {
            "open": len(self.open),
            "limit": self.limit,
            "near_limit": len(self.open) >= self.limit * NEAR,
            "closed_slow": self.timed_out,
            "refused": self.refused,
            "evicted": self.evicted,
        }


def guarded_protocol(stats: ConnectionStats) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a whole-request timeout and a connection cap (see module doc).

    The request clock is a start time per connection, checked by one sweep for all of them
    (every quarter of the timeout, at most a second apart): a timer armed and cancelled per
    request was a measurable share of a small call's cost under load (bench budget 5).
    """
    sweep_s = max(0.05, min(1.0, stats.request_timeout_s / 4))
    sweeping: list[asyncio.TimerHandle] = []

    def sweep(loop: asyncio.AbstractEventLoop) -> None:
        sweeping.clear()
        now = loop.time()
        for proto in list(stats.open):
            since = proto._since  # pyright: ignore[reportPrivateUsage]
            if since is not None and now - since >= stats.request_timeout_s:
                proto._expire()  # pyright: ignore[reportPrivateUsage]
        if stats.open:
            sweeping.append(loop.call_later(sweep_s, sweep, loop))

    class GuardedH11Protocol(H11Protocol):
        _since: float | None = None
        """When this connection's current request started arriving (None: not receiving one)."""
        _opened: float = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._opened = time.monotonic()
            stats.open.add(self)
            if len(stats.open) > stats.limit and not self._make_room():
                stats.refused += 1
                log.warning("refusing a connection: %d are open (the limit); see /healthz", stats.limit)
                transport.close()
                return
            self._arm()
            if not sweeping:
                sweeping.append(self.loop.call_later(sweep_s, sweep, self.loop))

        def connection_lost(self, exc: Exception | None) -> None:
            stats.open.discard(self)
            self._since = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        # --- the request clock ---------------------------------------------------------

        def _receiving(self) -> bool:
            """Whether a request is still (or may be about to be) arriving on this connection."""
            cycle: Any = self.cycle  # None until the first request's headers arrive
            return cycle is None or cycle.response_complete or cycle.more_body

        def _arm(self) -> None:
            if self.transport.is_closing() or not self._receiving():
                self._since = None
            elif self._since is None:
                self._since = self.loop.time()

        def _expire(self) -> None:
            self._since = None
            if self._receiving() and not self.transport.is_closing():
                stats.timed_out += 1
                log.warning("closed a connection that sent no whole request within %.0f s", stats.request_timeout_s)
                self.transport.close()

        def _make_room(self) -> bool:
            """Close the oldest connection that is not being served; False when there is none."""
            idle = [p for p in stats.open if p is not self and p._receiving() and not p.transport.is_closing()]
            if not idle:
                return False
            victim = min(idle, key=lambda p: p._opened)
            stats.evicted += 1
            log.warning("connection limit (%d) reached: closed the oldest idle connection", stats.limit)
            victim.transport.close()
            stats.open.discard(victim)
            return True

    return GuardedH11Protocol


__all__ = ["ACCEPT_BACKLOG", "ConnectionStats", "connection_cap", "descriptor_limit", "guarded_protocol"]
