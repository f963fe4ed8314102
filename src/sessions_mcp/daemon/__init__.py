"""The per-user daemon that makes ``sessions-mcp`` over stdio start in milliseconds.

:mod:`.relay` (standard library only) hands the client's stdio to a daemon over a Unix socket,
:mod:`.server` is the daemon, :mod:`.control` is ``sessions-mcp daemon status|stop``, and
:mod:`.common` holds what they share: where the sockets live and what keys a daemon.
"""

from __future__ import annotations

import os

OFF_WORDS = frozenset({"off", "0", "false", "no"})


def enabled() -> bool:
    """False when ``SESSIONS_MCP_DAEMON`` says off (off, 0, false, no). Imports nothing more."""
    return os.environ.get("SESSIONS_MCP_DAEMON", "on").strip().lower() not in OFF_WORDS
