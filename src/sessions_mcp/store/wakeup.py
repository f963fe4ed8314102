"""Cross-process wake-ups for one SQLite database: a datagram socket per listening process.

A process whose change feed follows other processes binds a Unix datagram socket in a directory
named after the database: ``/tmp/sessions-mcp-UID/wake-HASH`` (owned by the user, mode 0700,
and the same for every process of the user whatever its environment, so a server started by an
editor and ``sessions-mcp tail`` in a terminal find each other). A writer, after each commit,
sends one byte to every socket there but its own, so a waiter in another process wakes within
about a millisecond instead of at the next poll, and a process with nobody waiting costs
nothing. A socket nobody reads (its process died) is removed by the next writer. The poll stays
as a slower safety net: writers of other users or of older versions do not poke.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
import stat
from pathlib import Path

import anyio

log = logging.getLogger(__name__)

SUN_PATH_MAX = 107


def _user_dir() -> Path | None:
    path = Path("/tmp") / f"sessions-mcp-{os.getuid()}"  # noqa: S108 - owner and mode checked below
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        log.warning("not using %s for wake-ups: it must be a directory owned by you with mode 0700", path)
        return None
    return path


class Wakeup:
    """Pokes the other processes listening on a database, and listens for their pokes."""

    @classmethod
    def for_database(cls, db_path: str | Path) -> Wakeup | None:
        """The wake-ups of this database file, or None when no safe directory is available."""
        base = _user_dir()
        if base is None:
            return None
        digest = hashlib.sha256(os.path.realpath(db_path).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return cls(base / f"wake-{digest}")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._out.setblocking(False)
        self._in: socket.socket | None = None
        self._name = ""

    @property
    def listening(self) -> bool:
        """Whether this process's socket is bound (the change feed is following)."""
        return self._in is not None

    def poke(self) -> None:
        """Wake every other listening process (call after a commit; never blocks, never raises)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for name in names:
            if name == self._name or not name.endswith(".sock"):
                continue
            path = str(self.directory / name)
            try:
                self._out.sendto(b"!", path)
            except BlockingIOError:  # its queue is full: it has wake-ups pending already
                pass
            except (ConnectionRefusedError, FileNotFoundError):  # its process is gone
                with contextlib.suppress(OSError):
                    os.unlink(path)
            except OSError:
                log.debug("wake-up to %s failed", path, exc_info=True)

    def listen(self) -> bool:
        """Bind this process's socket (once). False when that is not possible: poll instead."""
        if self._in is not None:
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        name = f"{os.getpid()}-{secrets.token_hex(4)}.sock"
        try:  # the directory's mode 0700 keeps other users out; the socket's own mode does not matter
            with contextlib.suppress(FileExistsError):
                self.directory.mkdir(mode=0o700)
            sock.bind(str(self.directory / name))
        except OSError:
            sock.close()
            log.debug("cannot listen for wake-ups in %s", self.directory, exc_info=True)
            return False
        self._in, self._name = sock, name
        return True

    async def wait(self, timeout: float) -> bool:
        """True when poked within ``timeout`` seconds (all pending pokes are consumed)."""
        sock = self._in
        if sock is None:
            await anyio.sleep(timeout)
            return False
        if not self._drain(sock):
            with anyio.move_on_after(timeout):
                await anyio.wait_readable(sock)
            if not self._drain(sock):
                return False
        return True

    @staticmethod
    def _drain(sock: socket.socket) -> bool:
        got = False
        while True:
            try:
                sock.recv(64)
            except (BlockingIOError, OSError):
                return got
            got = True

    def close(self) -> None:
        """Stop listening and remove this process's socket."""
        if self._in is not None:
            self._in.close()
            with contextlib.suppress(OSError):
                os.unlink(self.directory / self._name)
            with contextlib.suppress(OSError):  # the last one out removes the directory
                self.directory.rmdir()
            self._in = None
        self._out.close()
