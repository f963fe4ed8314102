"""The daemon: one process per configuration key serving many stdio connections on one server.

Started by the relay (:mod:`.relay`), detached, with the environment and working directory of
the connection that started it; every later connection with the same key has exactly the same
configuration (see :mod:`.common`), so they share one :class:`~sessions_mcp.server.Runtime`
(store, backends, waiters) the way HTTP sessions do. Each connection gets its own MCP session
over the descriptors the relay handed over. Logs go to ``KEY.log`` in the runtime dir.

Lifecycle: it exits after ``SESSIONS_MCP_DAEMON__IDLE_S`` with no connection; a relay of another
version (or after the TOML file changed) retires it (it stops listening and exits when its last
connection ends); ``sessions-mcp daemon stop`` or SIGTERM stop it at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, UNIXSocketStream

from .common import encode, idle_seconds, meta_path, paths, peer_uid, runtime_dir, version_id

log = logging.getLogger(__name__)


class Daemon:
    """The accept loop, the connections and the daemon's lifecycle."""

    def __init__(self, mcp: Any, runtime: Any, files: dict[str, Path], config_file: Path | None) -> None:
        self.mcp = mcp
        self.runtime = runtime
        self.files = files
        self.version = version_id()
        self.config_file = config_file
        self.config_stamp = _stamp(config_file)
        self.idle_s = idle_seconds()
        self.connections = 0
        self.served = 0
        self.started = time.time()
        self.idle_since = time.monotonic()
        self.retired = False
        self.activity = anyio.Event()
        self.stop = anyio.Event()
        self.listener: Any = None
        self.sock_ino = 0

    async def run(self, ready_fd: int) -> None:
        """Listen, report ready on ``ready_fd``, serve until stopped, retired and idle, or idle."""
        sock_path = self.files["sock"]
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()  # stale; the relay that started us holds the lock
        self.listener = await anyio.create_unix_listener(sock_path, mode=0o600)
        self.sock_ino = sock_path.stat().st_ino
        self._write_meta()
        async with self.runtime.running(), anyio.create_task_group() as tg:
            tg.start_soon(self._accept_loop, tg)
            tg.start_soon(self._idle_watch)
            tg.start_soon(self._signals)
            os.write(ready_fd, b"ok\n")
            os.close(ready_fd)
            log.info("daemon %s listening on %s (pid %d)", self.version, sock_path, os.getpid())
            await self.stop.wait()
            tg.cancel_scope.cancel()
        self._stop_listening()
        log.info("daemon stopped after %d connections", self.served)

    async def _accept_loop(self, tg: Any) -> None:
        async with self.listener:
            while True:
                try:
                    conn = await self.listener.accept()
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return
                tg.start_soon(self._handle, conn)

    async def _handle(self, conn: UNIXSocketStream) -> None:
        async with conn:
            raw: socket.socket = conn.extra(SocketAttribute.raw_socket)  # noqa: S610 - anyio, not Django
            if peer_uid(raw) != os.getuid():
                log.warning("refused a connection from another user")
                return
            # counted from the hello on: the relay releases its lock once it has read it
            self._enter()
            try:
                await conn.send(encode({"version": self.version, "pid": os.getpid(), "fresh": self._fresh()}))
                msg, fds = await _receive(conn)
                op = msg.get("op") if msg else None
                if op == "serve" and len(fds) == 2:
                    self.served += 1
                    await self._serve(conn, fds[0], fds[1])
                    return
                for fd in fds:
                    os.close(fd)
                if op == "status":
                    await conn.send(encode(self.status()))
                elif op == "retire":
                    self._retire()
                    await conn.send(encode({"ok": True}))
                elif op == "stop":
                    await conn.send(encode({"ok": True, "pid": os.getpid()}))
                    self.stop.set()
            except (anyio.BrokenResourceError, anyio.EndOfStream, OSError):
                return
            finally:
                self._leave()

    async def _serve(self, conn: UNIXSocketStream, stdin_fd: int, stdout_fd: int) -> None:
        from .streams import fd_streams

        low = self.mcp._lowlevel_server  # pyright: ignore[reportPrivateUsage]
        code = 0
        async with anyio.create_task_group() as tg:

            async def relay_gone() -> None:
                # the relay (now a shell waiting on this socket) sends nothing: any end of the
                # socket means the client killed it, so the session ends with it
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    await conn.receive()
                tg.cancel_scope.cancel()

            await conn.send(encode({"ok": True}))
            tg.start_soon(relay_gone)
            try:
                async with fd_streams(stdin_fd, stdout_fd) as (read, write):
                    await low.run(read, write, low.create_initialization_options())
            except Exception:
                log.exception("a stdio connection failed")
                code = 1
            tg.cancel_scope.cancel()
        with contextlib.suppress(anyio.BrokenResourceError, OSError):
            await conn.send(f"{code}\n".encode())

    def _enter(self) -> None:
        self.connections += 1
        self.activity.set()

    def _leave(self) -> None:
        self.connections -= 1
        if self.connections == 0:
            self.idle_since = time.monotonic()
        self.activity.set()

    async def _idle_watch(self) -> None:
        while True:
            self.activity = anyio.Event()
            if self.connections == 0:
                if self.retired:
                    self.stop.set()
                    return
                left = self.idle_s - (time.monotonic() - self.idle_since)
                if left <= 0:
                    if self._try_exit_idle():
                        return
                    left = 0.1  # a relay holds the lock: it is about to connect
                with anyio.move_on_after(left):
                    await self.activity.wait()
            else:
                await self.activity.wait()

    def _try_exit_idle(self) -> bool:
        """Stop listening unless a relay is connecting right now (it holds the lock)."""
        lock = os.open(self.files["lock"], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            return False
        try:
            self._stop_listening()
        finally:
            os.close(lock)
        log.info("no connection for %.0f s: exiting", self.idle_s)
        self.stop.set()
        return True

    def _retire(self) -> None:
        log.info("retired by a newer relay: serving %d connection(s) to their end", self.connections - 1)
        self.retired = True
        self._stop_listening()

    def _stop_listening(self) -> None:
        """Close the listener and remove our socket and description (only if still ours)."""
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.extra(SocketAttribute.raw_socket).close()  # noqa: S610 - anyio
        try:
            mine = self.files["sock"].stat().st_ino == self.sock_ino
        except OSError:
            mine = False
        if mine:
            with contextlib.suppress(OSError):
                self.files["sock"].unlink()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for _ in signals:
                self.stop.set()
                return

    def _fresh(self) -> bool:
        return not self.retired and _stamp(self.config_file) == self.config_stamp

    def status(self) -> dict[str, Any]:
        """What ``sessions-mcp daemon status`` shows."""
        idle = 0.0 if self.connections > 1 else time.monotonic() - self.idle_since
        return {
            "pid": os.getpid(),
            "version": self.version,
            "key": self.files["sock"].stem,
            "cwd": os.getcwd(),
            "connections": self.connections - 1,  # not counting the asker
            "served": self.served,
            "uptime_s": round(time.time() - self.started, 1),
            "idle_s": round(idle, 1),
            "idle_exit_s": self.idle_s,
            "retired": self.retired,
            "log": str(self.files["log"]),
        }

    def _write_meta(self) -> None:
        meta = {
            "pid": os.getpid(),
            "socket": str(self.files["sock"]),
            "version": self.version,
            "started": self.started,
            "cwd": os.getcwd(),
        }
        path = meta_path(self.files["sock"].parent, os.getpid())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(path)


async def _receive(conn: UNIXSocketStream) -> tuple[dict[str, Any] | None, list[int]]:
    """One request line and the descriptors sent with it."""
    data, fds = await conn.receive_fds(4096, 2)
    while data and b"\n" not in data:
        more = await conn.receive()
        data += more
    try:
        msg = json.loads(data.split(b"\n", 1)[0]) if data else None
    except ValueError:
        msg = None
    return (msg if isinstance(msg, dict) else None), fds  # pyright: ignore[reportUnknownVariableType]


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def main(argv: list[str]) -> int:
    """``READY_FD KEY -- ARGS``: load the settings ARGS give, listen, serve (see the module docstring)."""
    ready_fd, key, _, *args = argv
    ready = int(ready_fd)
    from .. import cli
    from ..errors import SessionsError

    try:
        parsed = cli.parse(args)
        settings = cli.settings_from_args(parsed)
        from ..server import Runtime, build_server

        runtime = Runtime(settings)
        mcp = build_server(settings, runtime=runtime)
    except SessionsError as exc:
        os.write(ready, f"error 2 {exc}\n".encode())
        return 2
    except SystemExit as exc:  # argparse already printed to the log
        os.write(ready, f"error {exc.code or 2} invalid arguments\n".encode())
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s",
    )
    files = paths(runtime_dir(), key)
    daemon = Daemon(mcp, runtime, files, cli.config_file_of(parsed))
    try:
        anyio.run(daemon.run, ready)
    except Exception:
        log.exception("the daemon failed")
        return 1
    finally:
        with contextlib.suppress(OSError):
            meta_path(files["sock"].parent, os.getpid()).unlink()
    return 0
