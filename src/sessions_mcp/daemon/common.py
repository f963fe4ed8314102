"""What the relay, the daemon and ``sessions-mcp daemon`` share. Standard library only.

A daemon is keyed by everything that makes up a connection's configuration: the whole
environment (settings, secrets, and what agents inherit), the working directory, the command-line
flags, the Python executable and the user. Connections share a daemon only when all of that is
identical, so no setting, secret or environment variable of one ever reaches another. The TOML
file's content and the code's version are checked by the daemon at each connection instead
(:func:`version_id`, ``fresh`` in the hello), so editing either replaces the daemon.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import stat
import struct
import sys
from pathlib import Path
from typing import Any

from .. import __version__

DIR_ENV = "SESSIONS_MCP_DAEMON__DIR"
IDLE_ENV = "SESSIONS_MCP_DAEMON__IDLE_S"
DEFAULT_IDLE_S = 600.0
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes on Linux, with the trailing NUL


class DaemonUnavailable(Exception):
    """The daemon cannot be used here (runtime dir unsafe, path too long, spawn failed)."""


def idle_seconds() -> float:
    """``SESSIONS_MCP_DAEMON__IDLE_S``: how long a daemon with no connection lives (default 600)."""
    raw = os.environ.get(IDLE_ENV, "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_IDLE_S
    except ValueError:
        return DEFAULT_IDLE_S
    return value if value >= 0 else DEFAULT_IDLE_S


def runtime_dir(create: bool = True) -> Path:
    """This user's daemon directory, mode 0700 and owned by the user, or :class:`DaemonUnavailable`.

    ``SESSIONS_MCP_DAEMON__DIR``, else ``$XDG_RUNTIME_DIR/sessions-mcp``, else
    ``/tmp/sessions-mcp-UID``.
    """
    explicit = os.environ.get(DIR_ENV, "").strip()
    xdg = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if explicit:
        path = Path(explicit)
    elif xdg and os.path.isabs(xdg):
        path = Path(xdg) / "sessions-mcp"
    else:
        path = Path(os.environ.get("TMPDIR") or "/tmp") / f"sessions-mcp-{os.getuid()}"  # noqa: S108 - owner and mode checked below
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=False)
    try:
        st = path.lstat()
    except FileNotFoundError:
        if create:
            raise DaemonUnavailable(f"cannot create the daemon directory {path}") from None
        return path
    except OSError as exc:
        raise DaemonUnavailable(f"cannot use the daemon directory {path}: {exc}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise DaemonUnavailable(f"the daemon directory {path} must be a directory owned by you with mode 0700")
    return path


def config_key(argv: list[str], environ: dict[str, str] | None = None, cwd: str | None = None) -> str:
    """The daemon key of a connection: a hash of its whole configuration (see the module docstring)."""
    env = dict(os.environ if environ is None else environ)
    blob = json.dumps(
        {
            "uid": os.getuid(),
            "python": sys.executable,
            "cwd": os.getcwd() if cwd is None else cwd,
            "argv": argv,
            "env": sorted(env.items()),
        },
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def package_dir() -> Path:
    """The directory of the running ``sessions_mcp`` package."""
    return Path(__file__).resolve().parent.parent


def version_id() -> str:
    """The running code's identity: the version, where the package lives and when it last changed.

    A daemon whose identity differs from the relay's is replaced, so upgrading (or editing a
    development checkout) never leaves an old daemon serving new clients.
    """
    pkg = package_dir()
    newest = 0
    stack = [str(pkg)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        stack.append(entry.path)
                elif entry.name.endswith(".py"):
                    newest = max(newest, entry.stat().st_mtime_ns)
    return f"{__version__} {pkg} {newest}"


def paths(directory: Path, key: str) -> dict[str, Path]:
    """The files of one configuration's daemon: socket, lock and log."""
    return {ext: directory / f"{key}.{ext}" for ext in ("sock", "lock", "log")}


def meta_path(directory: Path, pid: int) -> Path:
    """A running daemon's description (JSON), kept until it exits, also while retired."""
    return directory / f"daemon-{pid}.json"


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot, /proc/PID/stat), None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def is_daemon(pid: int, started: int | None) -> bool:
    """True when ``pid`` runs and is the process a description file recorded (not a recycled PID)."""
    if not pid_alive(pid):
        return False
    now = start_time(pid)
    return now is None or started is None or now == started


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def encode(msg: dict[str, Any]) -> bytes:
    """One protocol message: a JSON object on one line."""
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def read_meta(path: Path) -> dict[str, Any] | None:
    """A daemon's description file, or None when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None  # pyright: ignore[reportUnknownVariableType]


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True
