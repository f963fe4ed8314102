"""``doctor`` checks of the local store: the SQLite file (read-only, plus a lock probe) or PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import anyio

from . import __version__
from .diagnostics import Check
from .errors import SchemaTooNew

if TYPE_CHECKING:
    from .settings import Settings
    from .store.base import Store

STORE_TIMEOUT_S = 15.0
WAL_WARN_BYTES = 128 * 1024 * 1024
"""The store caps the WAL at 64 MiB after a checkpoint; twice that means checkpoints are blocked."""
DB_FLAG = "SESSIONS_MCP_LOCAL__DB (or --db)"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


# --- the local store ---------------------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def sqlite_checks(path: Path, *, configured: bool) -> list[Check]:
    """Checks of a SQLite store at ``path`` (blocking; read-only except for a lock probe)."""
    from .store.migrations import SQLITE_MIGRATIONS

    where = "set by SESSIONS_MCP_LOCAL__DB" if configured else f"default location; move it with {DB_FLAG}"
    checks = [Check("store", "ok", f"SQLite database {path} ({where})")]
    folder = path.parent
    if not folder.exists():
        base = _nearest_existing(folder)
        if base.is_dir() and os.access(base, os.W_OK | os.X_OK):
            checks.append(Check("store: file", "ok", f"not created yet; the server creates {folder} and the file"))
        else:
            checks.append(
                Check(
                    "store: folder",
                    "fail",
                    f"{folder} does not exist and {base} is not writable",
                    f"create {folder}, or set {DB_FLAG} to a path in a writable folder",
                )
            )
        return checks
    if not folder.is_dir():
        checks.append(Check("store: folder", "fail", f"{folder} is not a folder", f"set {DB_FLAG} to another path"))
        return checks
    if not os.access(folder, os.W_OK | os.X_OK):
        checks.append(
            Check(
                "store: folder",
                "fail",
                f"{folder} is not writable (SQLite keeps its -wal and -shm files next to the database)",
                f"make the folder writable (chmod u+w {folder}) or set {DB_FLAG} to a writable path",
            )
        )
        return checks
    if not path.exists():
        checks.append(Check("store: file", "ok", "not created yet; the server creates it on first start"))
        return checks
    if not path.is_file():
        checks.append(Check("store: file", "fail", f"{path} is not a file", f"set {DB_FLAG} to a file path"))
        return checks

    mode = stat.S_IMODE(path.stat().st_mode)
    if not os.access(path, os.R_OK):
        checks.append(
            Check(
                "store: permissions",
                "fail",
                f"the database is not readable by this user (mode {mode:04o})",
                f"chmod u+rw {path}, or set {DB_FLAG} to another path",
            )
        )
        return checks
    if not os.access(path, os.W_OK):
        checks.append(
            Check(
                "store: permissions",
                "fail",
                f"the database is read-only (mode {mode:04o})",
                f"chmod u+w {path}, or set {DB_FLAG} to a writable path",
            )
        )
    elif mode & stat.S_IWOTH:
        checks.append(
            Check(
                "store: permissions",
                "warn",
                f"anyone on this machine can change it (mode {mode:04o})",
                f"chmod 600 {path}",
            )
        )
    else:
        checks.append(Check("store: permissions", "ok", f"readable and writable (mode {mode:04o})"))

    wal = Path(f"{path}-wal")
    size, wal_size = path.stat().st_size, (wal.stat().st_size if wal.exists() else 0)
    checks.extend(_sqlite_contents(path, [name for name, _ in SQLITE_MIGRATIONS]))
    if any(c.level == "fail" and c.component in ("store: file", "store: schema") for c in checks):
        return checks
    if wal_size > WAL_WARN_BYTES:
        checks.append(
            Check(
                "store: size",
                "warn",
                f"database {_size(size)}, write-ahead log {_size(wal_size)} (not shrinking)",
                "a process keeps a read open so the log cannot be checkpointed; restart the sessions-mcp "
                "processes that use this store",
            )
        )
    else:
        checks.append(Check("store: size", "ok", f"database {_size(size)}, write-ahead log {_size(wal_size)}"))
    if os.access(path, os.W_OK):
        checks.append(_lock_probe(path))
    return checks


def _sqlite_contents(path: Path, known: list[str]) -> list[Check]:
    """Schema version, integrity and counts, through a read-only connection."""
    broken_fix = (
        f"stop the servers using it, move it aside (mv {path} {path}.broken; nothing is deleted) and start "
        f"again for a new empty store, or set {DB_FLAG} to another database"
    )
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error as exc:
        return [Check("store: file", "fail", f"cannot open the database read-only: {exc}", broken_fix)]
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_migrations" not in tables:
            if tables:
                shown = ", ".join(sorted(tables)[:5])
                return [
                    Check(
                        "store: schema",
                        "fail",
                        f"not a sessions-mcp database (it has tables {shown})",
                        f"set {DB_FLAG} to another path; this file belongs to something else",
                    )
                ]
            return [Check("store: schema", "ok", "empty database; the server sets it up on first start")]
        applied = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
        unknown = [name for name in applied if name not in known]
        pending = [name for name in known if name not in applied]
        out: list[Check] = []
        if unknown:
            out.append(
                Check(
                    "store: schema",
                    "fail",
                    f"written by a newer sessions-mcp: migration {', '.join(unknown)} is unknown to {__version__}",
                    "upgrade sessions-mcp (pip install -U sessions-mcp, or uvx sessions-mcp@latest), or set "
                    f"{DB_FLAG} to another database",
                )
            )
            return out
        version = applied[-1] if applied else "none"
        if pending:
            out.append(
                Check(
                    "store: schema",
                    "ok",
                    f"schema {version}; {len(pending)} newer migration(s) are applied at the next server start",
                )
            )
        else:
            out.append(Check("store: schema", "ok", f"schema {version} (current, {len(known)} migration(s))"))
        verdict = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")]
        if verdict != ["ok"]:
            out.append(Check("store: integrity", "fail", "damaged: " + "; ".join(verdict)[:300], broken_fix))
            return out
        journal = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        counts = ""
        if {"sessions", "messages"} <= tables:
            sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
            messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            counts = f"; {sessions} session(s), {messages} message(s)"
        if journal != "wal":
            out.append(
                Check(
                    "store: integrity",
                    "warn",
                    f"quick check passed, but journal mode is {journal}, not wal{counts}",
                    "the server switches to WAL at start; if it stays this way the file system (NFS, SMB) "
                    f"lacks shared memory: set {DB_FLAG} to a local disk",
                )
            )
        else:
            out.append(Check("store: integrity", "ok", f"quick check passed, journal mode wal{counts}"))
        return out
    except sqlite3.DatabaseError as exc:
        return [Check("store: file", "fail", f"not a SQLite database, or damaged ({exc})", broken_fix)]
    finally:
        conn.close()


def _lock_probe(path: Path) -> Check:
    """Whether a write could start right now (takes and releases the write lock; changes nothing)."""
    try:
        conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    except sqlite3.Error as exc:
        return Check("store: lock", "fail", f"cannot open for writing: {exc}", f"check the permissions of {path}")
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return Check("store: lock", "ok", "no other process holds the write lock")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return Check(
                "store: lock",
                "warn",
                "another process holds the write lock right now",
                f"normal while a server writes; if it stays locked, find the holder with `fuser {path}` (or lsof) "
                "and stop it; under heavy load raise SESSIONS_MCP_LOCAL__BUSY_TIMEOUT_S",
            )
        return Check("store: lock", "fail", f"cannot start a write: {exc}", f"check the permissions of {path}")
    finally:
        conn.close()


async def _postgres_checks(store: Store) -> list[Check]:
    checks = [Check("store", "ok", f"PostgreSQL {store.location} (set by SESSIONS_MCP_LOCAL__DB)")]
    try:
        with anyio.fail_after(STORE_TIMEOUT_S):
            await store.open()
            facts = await store.describe()
    except ImportError:
        return [
            *checks,
            Check(
                "store: driver",
                "fail",
                "the PostgreSQL driver is not installed",
                "pip install 'sessions-mcp[postgres]' (or uvx --from 'sessions-mcp[postgres]' sessions-mcp)",
            ),
        ]
    except TimeoutError:
        return [
            *checks,
            Check(
                "store: connection",
                "fail",
                f"no answer within {STORE_TIMEOUT_S:g}s",
                "check host, port and firewall in SESSIONS_MCP_LOCAL__DB",
            ),
        ]
    except SchemaTooNew as exc:
        fix = "upgrade sessions-mcp on every replica, or point SESSIONS_MCP_LOCAL__DB at another database"
        return [*checks, Check("store: schema", "fail", str(exc), fix)]
    except Exception as exc:
        return [*checks, Check("store: connection", "fail", str(exc), "check SESSIONS_MCP_LOCAL__DB")]
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await store.close()
    known = list(facts.get("known_migrations") or [])
    applied = list(facts.get("migrations") or [])
    unknown = [m for m in applied if m not in known]
    if unknown:
        checks.append(
            Check(
                "store: schema",
                "fail",
                f"written by a newer sessions-mcp: migration {', '.join(unknown)} is unknown",
                "upgrade sessions-mcp on every replica, or point SESSIONS_MCP_LOCAL__DB at another database",
            )
        )
    else:
        current = "current" if applied == known else f"{len(known) - len(applied)} migration(s) behind"
        detail = f"schema {facts.get('schema_version') or 'none'} ({current})"
        if "sessions" in facts:
            detail += f"; {facts['sessions']} session(s), {facts.get('messages', 0)} message(s)"
        checks.append(Check("store: schema", "ok", detail))
    if facts.get("server_version"):
        size = f", database {_size(int(facts['size_bytes']))}" if facts.get("size_bytes") is not None else ""
        checks.append(Check("store: server", "ok", f"PostgreSQL {facts['server_version']}{size}"))
    return checks


async def store_checks(settings: Settings) -> list[Check]:
    """Checks of the store the settings select (SQLite file or PostgreSQL)."""
    from .store import create_store, is_postgres_url

    location = settings.local.db_location()
    if is_postgres_url(location):
        return await _postgres_checks(create_store(settings.local))
    configured = bool(settings.local.db)
    return await anyio.to_thread.run_sync(lambda: sqlite_checks(Path(location).expanduser(), configured=configured))
