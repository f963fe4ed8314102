"""Who holds a SQLite database's write lock, for error messages ("held by pid 4242 (sessions-mcp …)").

SQLite locks with POSIX advisory locks (``fcntl``), which Linux lists in ``/proc/locks`` with the
holder's process id and the file's inode. In WAL mode the writer holds a write lock on the
``-shm`` file (and, for a rollback journal or a checkpoint, on the database file). Elsewhere, or
when nothing is listed, the message says how to find the holder instead.
"""

from __future__ import annotations

import os
from pathlib import Path


def _inodes(path: Path) -> set[tuple[int, int, int]]:
    found: set[tuple[int, int, int]] = set()
    for candidate in (path, Path(f"{path}-shm"), Path(f"{path}-wal")):
        try:
            st = candidate.stat()
        except OSError:
            continue
        found.add((os.major(st.st_dev), os.minor(st.st_dev), st.st_ino))
    return found


def holders(path: Path, *, locks_file: str = "/proc/locks") -> list[int]:
    """Process ids (other than ours) holding a write lock on the database or its ``-shm``/``-wal``."""
    wanted = _inodes(path)
    if not wanted:
        return []
    try:
        lines = Path(locks_file).read_text().splitlines()
    except OSError:
        return []
    mine = os.getpid()
    pids: list[int] = []
    for line in lines:
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 4242 08:01:131 120 120" (a "->" marks a waiter, which we skip)
        if "->" in fields or len(fields) < 6 or fields[1] != "POSIX" or fields[3] != "WRITE":
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        if key in wanted and pid != mine and pid not in pids:
            pids.append(pid)
    return pids


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    words = [w.decode("utf-8", "replace") for w in raw.split(b"\0") if w]
    text = " ".join(" ".join(words).split())
    return text if len(text) <= 100 else text[:99] + "…"


def describe(path: Path) -> str:
    """``"held by pid 4242 (python -m sessions_mcp)"``, or how to find the holder."""
    pids = holders(path)
    if not pids:
        return f"find the holder with `fuser {path}` (or lsof)"
    named = ", ".join(f"pid {pid}" + (f" ({cmd})" if (cmd := _command(pid)) else "") for pid in pids[:3])
    state = ""
    try:
        stat = Path(f"/proc/{pids[0]}/stat").read_text().rpartition(")")[2].split()
        if stat and stat[0] == "T":
            state = "; it is stopped (SIGSTOP or a debugger): resume it with kill -CONT or end it"
    except OSError:
        pass
    return f"held by {named}{state}"


__all__ = ["describe", "holders"]
