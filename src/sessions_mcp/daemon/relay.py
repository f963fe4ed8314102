"""The relay: what ``sessions-mcp`` over stdio runs. Standard library only, so it starts in milliseconds.

It finds the daemon for this configuration and hands it the client's stdin and stdout over the
Unix socket (``SCM_RIGHTS``: the daemon then reads and writes the client's pipes or sockets
directly, with no copy in between); when none runs, it forks one that serves this connection
from the descriptors it inherits. Then it replaces itself with ``/bin/sh`` waiting on the
control socket: a ~1.5 MB process that exits with the session's exit status, or 1 with a message
on stderr when the daemon is gone. The client keeps a child process to signal and wait for,
exactly as with an in-process server.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from .common import SUN_PATH_MAX, DaemonUnavailable, config_key, encode, paths, peer_uid, runtime_dir, version_id

LOG_MAX_BYTES = 1_000_000
# $0 is "sessions-mcp" so the waiting process is recognisable in ps; the daemon writes the exit
# status as one line when the session ends
WAITER = (
    'IFS= read -r code && case "$code" in *[!0-9]*|"") exit 1;; *) exit "$code";; esac; '
    'echo "sessions-mcp: lost the connection to its daemon; restart the server '
    '(sessions-mcp daemon status shows the daemons)" >&2; exit 1'
)


def relay(argv: list[str]) -> int | None:
    """Serve this stdio connection through the daemon; None when the caller must serve in-process."""
    try:
        directory = runtime_dir()
        key = config_key(argv)
        files = paths(directory, key)
        if len(os.fsencode(files["sock"])) > SUN_PATH_MAX:
            raise DaemonUnavailable(f"the socket path {files['sock']} is too long for a Unix socket")
        sock, leftover = _attach(argv, files)
    except (DaemonUnavailable, OSError) as exc:
        print(f"sessions-mcp: serving in-process, the daemon is unavailable: {exc}", file=sys.stderr)
        return None
    return _wait(sock, leftover)


def _attach(argv: list[str], files: dict[str, Path]) -> tuple[socket.socket, bytes]:
    """The control socket of this connection, served by a current daemon.

    Under the lock: connect (replacing a daemon of another version), or start a daemon that
    serves this connection itself, straight from the descriptors it inherits.
    """
    me = version_id()
    lock = os.open(files["lock"], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for _attempt in range(4):
            sock = _connect(files["sock"])
            if sock is None:
                return _spawn(argv, files, lock), b""
            hello, _ = _read_line(sock)
            if hello is None:  # exiting as we connected: start a new one
                sock.close()
                with contextlib.suppress(FileNotFoundError):
                    files["sock"].unlink()
                continue
            if hello.get("version") != me or not hello.get("fresh", False):
                sock.sendall(encode({"op": "retire"}))
                _read_line(sock)
                sock.close()
                continue
            break
        else:
            raise DaemonUnavailable("the daemon did not accept the connection after several attempts")
    finally:
        os.close(lock)  # a daemon whose hello we read counts us as a connection and will not idle out
    socket.send_fds(sock, [encode({"op": "serve"})], [0, 1])
    ack, rest = _read_line(sock)
    if ack is None or not ack.get("ok"):
        raise DaemonUnavailable(f"the daemon refused the connection: {ack}")
    return sock, rest


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    if peer_uid(sock) != os.getuid():
        sock.close()
        raise DaemonUnavailable(f"{path} belongs to another user")
    return sock


def _read_line(sock: socket.socket) -> tuple[dict[str, Any] | None, bytes]:
    """One JSON line from the daemon, and whatever arrived after it; (None, b"") at EOF."""
    buf = b""
    while b"\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            return None, b""
        buf += chunk
    line, rest = buf.split(b"\n", 1)
    return json.loads(line), rest


def _spawn(argv: list[str], files: dict[str, Path], lock: int) -> socket.socket:
    """Start the daemon detached (double fork, own session), serving this connection; its control socket.

    The daemon is this process forked, not a new interpreter: it inherits the interpreter this
    relay already started (and its environment, working directory and ``sys.path``, exactly what
    an in-process server would have) and this connection's stdin, stdout and stderr, so the first
    start costs what an in-process start costs. It inherits the lock too and releases it once it
    listens. Errors (a bad setting) reach the client's stderr as they would in-process.
    """
    with contextlib.suppress(FileNotFoundError):
        files["sock"].unlink()  # stale: nobody answered on it, and we hold the lock
    log = files["log"]
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > LOG_MAX_BYTES:
            log.unlink()
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    ours, theirs = socket.socketpair()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked children, which never return here
        code = 1
        try:
            os.setsid()
            if os.fork() == 0:
                ours.close()
                client = (os.dup(0), os.dup(1), os.dup(2))
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, 0)
                os.dup2(null, 1)
                os.dup2(log_fd, 2)
                os.close(null)
                os.close(log_fd)
                from .server import main as daemon_main

                code = daemon_main(files["sock"].stem, argv, lock=lock, first=(*client, theirs))
            else:
                code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    theirs.close()
    os.close(log_fd)
    os.waitpid(pid, 0)
    return ours


def _wait(sock: socket.socket, leftover: bytes) -> int:
    """Become a tiny process that lives as long as the session and exits with its status."""
    if not leftover:
        os.dup2(sock.fileno(), 0)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        with contextlib.suppress(OSError):  # no /bin/sh: wait here instead
            os.execv("/bin/sh", ["sessions-mcp", "-c", WAITER])  # noqa: S606 - fixed script
    data = leftover
    while b"\n" not in data:
        chunk = sock.recv(64)
        if not chunk:
            print("sessions-mcp: lost the connection to its daemon; restart the server", file=sys.stderr)
            return 1
        data += chunk
    line = data.split(b"\n", 1)[0].strip()
    return int(line) if line.isdigit() else 1
