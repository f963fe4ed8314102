"""The per-user daemon that makes ``sessions-mcp`` over stdio start in milliseconds.

:mod:`.relay` (standard library only) hands the client's stdio to a daemon over a Unix socket,
:mod:`.server` is the daemon, :mod:`.control` is ``sessions-mcp daemon status|stop``, and
:mod:`.common` holds what they share: where the sockets live and what keys a daemon.
"""
