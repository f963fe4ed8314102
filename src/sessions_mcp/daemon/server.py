"""The daemon: one process per configuration key serving many stdio connections on one server.

Forked by the relay (:mod:`.relay`), detached, with the environment and working directory of
the connection that started it, which it serves first, from the descriptors it inherited; every later connection with the same key has exactly the same
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketAttribute, UNIXSocketStream

from .common import encode, idle_seconds, meta_path, paths, peer_uid, runtime_dir, start_time, version_id

log = logging.getLogger(__name__)

First = tuple[int, int, int, socket.socket]
"""The connection the daemon was started for: the client's stdin, stdout and stderr, and the
control socket of its relay."""


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

    async def run(self, lock: int, first: First) -> None:
        """Listen (then release the relay's ``lock``), serve ``first`` and whoever connects, until
        stopped, retired and idle, or idle."""
        sock_path = self.files["sock"]
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()  # stale; we hold the lock
        self.listener = await anyio.create_unix_listener(sock_path, mode=0o600)
        self.sock_ino = sock_path.stat().st_ino
        self._write_meta()
        os.close(lock)  # other relays may connect now: the listener queues them until we accept
        async with self.runtime.running(), anyio.create_task_group() as tg:
            self._enter()
            self.served += 1
            tg.start_soon(self._serve_first, first)
            tg.start_soon(self._accept_loop, tg)
            tg.start_soon(self._idle_watch)
            tg.start_soon(self._signals)
            log.info("daemon %s listening on %s (pid %d)", self.version, sock_path, os.getpid())
            await self.stop.wait()
            tg.cancel_scope.cancel()
        self._stop_listening()
        log.info("daemon stopped after %d connections", self.served)

    async def _serve_first(self, first: First) -> None:
        stdin_fd, stdout_fd, stderr_fd, ctl = first
        os.close(stderr_fd)  # started: from here on, what the client would see on stderr is in our log
        ctl.setblocking(False)

        async def gone() -> None:
            with contextlib.suppress(OSError):
                await anyio.wait_readable(ctl)

        async def send(data: bytes) -> None:
            with contextlib.suppress(OSError):
                ctl.send(data)

        try:
            await self._serve(gone, send, stdin_fd, stdout_fd)
        finally:
            ctl.close()
            self._leave()

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
                    await conn.send(encode({"ok": True}))

                    async def gone() -> None:
                        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            await conn.receive()

                    async def send(data: bytes) -> None:
                        with contextlib.suppress(anyio.BrokenResourceError, OSError):
                            await conn.send(data)

                    await self._serve(gone, send, fds[0], fds[1])
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

    async def _serve(
        self,
        gone: Callable[[], Awaitable[None]],
        send: Callable[[bytes], Awaitable[None]],
        stdin_fd: int,
        stdout_fd: int,
    ) -> None:
        """One MCP session over the client's descriptors; its exit status goes to the relay."""
        from .streams import fd_streams

        low = self.mcp._lowlevel_server  # pyright: ignore[reportPrivateUsage]
        code = 0
        async with anyio.create_task_group() as tg:

            async def relay_gone() -> None:
                # the relay (now a shell waiting on this socket) sends nothing: any end of the
                # socket means the client killed it, so the session ends with it
                await gone()
                tg.cancel_scope.cancel()

            tg.start_soon(relay_gone)
            try:
                async with fd_streams(stdin_fd, stdout_fd) as (read, write):
                    await low.run(read, write, low.create_initialization_options())
            except Exception:
                log.exception("a stdio connection failed")
                code = 1
            tg.cancel_scope.cancel()
        await send(f"{code}\n".encode())

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
            "start_time": start_time(os.getpid()),
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


def main(key: str, args: list[str], *, lock: int, first: First) -> int:
    """The daemon for configuration ``key``, serving ``first`` (see the module docstring).

    Runs in the process the relay forked; ``args`` are the command line's. A setting the server
    refuses is reported on the first client's stderr, with the exit status an in-process server
    would have had, and no daemon stays.
    """
    with contextlib.suppress(OSError):  # "sessions-mcpd" in ps, and how tests tell the daemon apart
        Path("/proc/self/comm").write_text("sessions-mcpd")
    from .. import startup

    startup.begin()
    try:
        return _main(key, args, lock=lock, first=first)
    finally:
        startup.done()


def _main(key: str, args: list[str], *, lock: int, first: First) -> int:
    from .. import cli, startup
    from ..errors import SessionsError

    files = paths(runtime_dir(), key)
    try:
        parsed = cli.parse(args)
        settings = cli.settings_from_args(parsed)
        from ..server import Runtime, build_server

        runtime = Runtime(settings)
        mcp = build_server(settings, runtime=runtime)
    except SessionsError as exc:
        return _refuse(first, f"sessions-mcp: {exc}", 2)
    except SystemExit as exc:  # argparse already accepted these arguments in the relay
        return _refuse(first, "sessions-mcp: invalid arguments", exc.code if isinstance(exc.code, int) else 2)
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s",
    )
    from .. import logfilter

    logfilter.install()  # as in-process: a client repeating a bad line must not flood the log
    daemon = Daemon(mcp, runtime, files, cli.config_file_of(parsed))
    startup.done()
    try:
        anyio.run(daemon.run, lock, first)
    except Exception as exc:
        log.exception("the daemon failed")
        if daemon.served == 0:  # never got to serve its first client: tell it why
            return _refuse(first, f"sessions-mcp: the daemon failed to start ({exc}); its log is {files['log']}; "
                           "SESSIONS_MCP_DAEMON=off serves in-process", 1)  # fmt: skip
        return 1
    finally:
        with contextlib.suppress(OSError):
            meta_path(files["sock"].parent, os.getpid()).unlink()
    return 0


def _refuse(first: First, message: str, code: int) -> int:
    """Tell the first client why it will not be served, and with which exit status."""
    _, _, stderr_fd, ctl = first
    with contextlib.suppress(OSError):
        os.write(stderr_fd, message.encode() + b"\n")
    with contextlib.suppress(OSError):
        ctl.setblocking(True)
        ctl.sendall(f"{code}\n".encode())
    return code
