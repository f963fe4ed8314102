"""``sessions-mcp doctor``: check the configuration, the local store and every enabled backend.

It builds what the server would build (store, backends) without serving anything, asks each
backend for its :meth:`~sessions_mcp.backends.base.SessionBackend.diagnose` checks and inspects
the store itself, read-only where it can: a doctor must not migrate, repair or create a database
the user is asking about. The result is a table of :class:`~sessions_mcp.diagnostics.Check` lines
(ok / warn / FAIL, what was found, what to do) on stdout; the exit status is 1 when any check
failed. Secrets never appear: every configured secret value is masked in the output as a last
line of defence behind the checks' own care.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import quote

import anyio
from pydantic import BaseModel, SecretStr

from . import __version__
from .diagnostics import Check
from .errors import SchemaTooNew, SessionsError

if TYPE_CHECKING:
    from .backends.base import SessionBackend
    from .settings import Settings
    from .store.base import Store

BACKEND_TIMEOUT_S = 30.0
"""How long one backend's checks may take before the doctor reports it as not answering."""
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


# --- configuration and backends ------------------------------------------------------------------


def config_checks(settings: Settings) -> list[Check]:
    """What configuration is in effect (never values of secrets)."""
    from .settings import default_config_path

    default = settings.backends[0]
    listed = ", ".join(f"{b} (default)" if b == default else b for b in settings.backends)
    cfg = default_config_path()
    where = f"config file {cfg}" if cfg.is_file() else f"no config file at {cfg} (environment and defaults)"
    checks = [Check("configuration", "ok", f"backends: {listed}; {where}")]
    return [*checks, *http_checks(settings), *connection_checks(settings)]


def connection_checks(settings: Settings) -> list[Check]:
    """Whether the descriptor limit leaves room for the HTTP connection cap (HTTP settings only)."""
    http = settings.http
    if not (http.tokens or http.tokens_file or http.jwt_public_key or http.jwks_url or http.host != "127.0.0.1"):
        return []
    from .http_guard import capacity_note

    near, what, fix = capacity_note(http.max_connections)
    return [Check("http: connections", "warn" if near else "ok", what, fix)]


def http_checks(settings: Settings) -> list[Check]:
    """HTTP authentication, when any HTTP setting says the server is meant to be reached over HTTP."""
    http = settings.http
    if not (http.tokens or http.tokens_file or http.jwt_public_key or http.jwks_url or http.host != "127.0.0.1"):
        return []
    from .auth import build_auth
    from .http_app import check_bind

    try:
        auth = build_auth(http)
        check_bind(http, auth)
    except SessionsError as exc:
        return [Check("http: auth", "fail", str(exc), "change the setting named above (docs/http-and-auth.md)")]
    if auth is None:
        return [
            Check("http: auth", "ok", f"none configured; {http.host} is loopback, so only this machine can connect")
        ]
    kinds: list[str] = []
    if auth.static_tokens:
        kinds.append(f"{len(auth.static_tokens)} static token(s)")
    if http.jwt_public_key or http.jwks_url:
        kinds.append("JWT via " + ("JWKS " + http.jwks_url if http.jwks_url else "a public key"))
    return [Check("http: auth", "ok", f"{' and '.join(kinds)}; binding {http.host}:{http.port}")]


def _local_agent_checks(settings: Settings) -> list[Check]:
    """Fallback checks of the local agent, used when the local backend has no checks of its own."""
    local = settings.local
    if local.agent == "none":
        return [
            Check(
                "local: agent",
                "ok",
                "none: sessions are a mailbox another MCP client answers "
                "(set SESSIONS_MCP_LOCAL__AGENT=command or openai to attach an agent)",
            )
        ]
    if local.agent == "command":
        import shlex

        try:
            argv = shlex.split(local.agent_command)
        except ValueError as exc:
            return [
                Check(
                    "local: agent",
                    "fail",
                    f"SESSIONS_MCP_LOCAL__AGENT_COMMAND does not parse: {exc}",
                    "fix the quoting in SESSIONS_MCP_LOCAL__AGENT_COMMAND",
                )
            ]
        if not argv:
            return [
                Check(
                    "local: agent",
                    "fail",
                    "agent is 'command' but no command is set",
                    "set SESSIONS_MCP_LOCAL__AGENT_COMMAND, e.g. 'claude -p'",
                )
            ]
        found = shutil.which(argv[0])
        if found is None:
            return [
                Check(
                    "local: agent",
                    "fail",
                    f"command {argv[0]!r} is not on PATH",
                    "install it, or give its full path in SESSIONS_MCP_LOCAL__AGENT_COMMAND",
                )
            ]
        checks = [Check("local: agent", "ok", f"command {argv[0]} ({found})")]
        cwd = local.agent_cwd
        if cwd and "{" not in cwd and not Path(cwd).expanduser().is_dir():
            checks.append(
                Check(
                    "local: agent folder",
                    "fail",
                    f"SESSIONS_MCP_LOCAL__AGENT_CWD {cwd} is not a folder",
                    "create it, or use a path with {session_id} (created per session)",
                )
            )
        return checks
    out: list[Check] = []
    if not local.openai_model:
        out.append(
            Check(
                "local: agent", "fail", "agent is 'openai' but no model is set", "set SESSIONS_MCP_LOCAL__OPENAI_MODEL"
            )
        )
    else:
        out.append(
            Check("local: agent", "ok", f"openai-compatible {local.openai_base_url}, model {local.openai_model}")
        )
    loopback = any(h in local.openai_base_url for h in ("://127.0.0.1", "://localhost", "://[::1]"))
    if local.openai_api_key is None and not loopback:
        out.append(
            Check(
                "local: agent key",
                "warn",
                "no API key set for a remote endpoint",
                "set OPENAI_API_KEY (or SESSIONS_MCP_LOCAL__OPENAI_API_KEY)",
            )
        )
    return out


async def backend_checks(name: str, settings: Settings, store: Store) -> list[Check]:
    """One backend's checks; never raises."""
    from .backends import create_backend
    from .backends.base import SessionBackend

    try:
        backend: SessionBackend = create_backend(name, settings, store)
    except SessionsError as exc:
        return [Check(name, "fail", str(exc), "change the setting named above")]
    except ImportError as exc:
        return [
            Check(
                name,
                "fail",
                f"the {name} backend cannot be loaded ({exc})",
                f"reinstall sessions-mcp, or remove {name} from SESSIONS_MCP_BACKENDS",
            )
        ]
    except Exception as exc:
        return [
            Check(
                name,
                "fail",
                f"cannot set up the {name} backend: {type(exc).__name__}: {exc}",
                f"check the {name} settings (README: configuration)",
            )
        ]
    if type(backend).diagnose is SessionBackend.diagnose:
        if name == "local":
            return _local_agent_checks(settings)
        return [Check(name, "ok", "enabled (this backend has no further checks)")]
    try:
        with anyio.fail_after(BACKEND_TIMEOUT_S):
            checks = await backend.diagnose()
    except TimeoutError:
        checks = [
            Check(
                name,
                "fail",
                f"no answer within {BACKEND_TIMEOUT_S:g}s",
                f"check the network, a proxy, and the {name} base URL setting",
            )
        ]
    except Exception as exc:
        checks = [
            Check(
                name,
                "fail",
                f"checks crashed: {type(exc).__name__}: {exc}",
                "report this; run with --log-level DEBUG for details",
            )
        ]
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await backend.aclose()
    return checks or [Check(name, "ok", "enabled")]


async def collect(settings: Settings) -> list[Check]:
    """Every check, in the order they are printed."""
    from .store import create_store
    from .views import with_progress

    checks = config_checks(settings)
    checks += await with_progress("checking the local store", lambda: store_checks(settings))
    store = create_store(settings.local)
    for name in settings.backends:
        checks += await with_progress(f"checking the {name} backend", lambda n=name: backend_checks(n, settings, store))
    if settings.local.mirror:
        from .mirror import mirror_checks

        checks += await with_progress("checking the web-app mirror", lambda: mirror_checks(settings, store))
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(Exception):
            await store.close()
    return checks


# --- output ------------------------------------------------------------------------------------


def _secrets(model: BaseModel) -> Iterator[str]:
    for name in type(model).model_fields:
        value: Any = getattr(model, name)
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            if len(raw) >= 4:
                yield raw
                # a tokens list is "principal=token,..." and a check may quote one token
                for piece in raw.replace("\n", ",").split(","):
                    token = piece.partition("=")[2].strip()
                    if len(token) >= 4:
                        yield token
        elif isinstance(value, BaseModel):
            yield from _secrets(value)


def mask(text: str, secrets: list[str]) -> str:
    """``text`` with every secret value replaced."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


_LABEL = {"ok": "ok", "warn": "warn", "fail": "FAIL"}
_COLOR = {"ok": "32", "warn": "33", "fail": "31"}


def _wrap(text: str, width: int) -> list[str]:
    # paths, URLs and commands stay whole so they can be copied
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def render(checks: list[Check], *, width: int = 100, color: bool = False) -> str:
    """The table: status, what was checked, what was found, and on the next line what to do."""
    comp_w = min(max((len(c.component) for c in checks), default=10), 24)
    indent = 6 + comp_w + 2
    body_w = max(width - indent, 30)
    lines: list[str] = [f"{'':6}{'CHECK':<{comp_w}}  FOUND"]
    for c in checks:
        label = _LABEL[c.level]
        shown = f"\033[{_COLOR[c.level]}m{label:<4}\033[0m" if color else f"{label:<4}"
        detail = _wrap(c.detail, body_w) or [""]
        component = c.component if len(c.component) <= comp_w else c.component[: comp_w - 1] + "…"
        lines.append(f"{shown}  {component:<{comp_w}}  {detail[0]}")
        lines += [" " * indent + more for more in detail[1:]]
        if c.fix and c.level != "ok":
            fix = _wrap("fix: " + c.fix, body_w)
            lines += [" " * indent + part for part in fix]
    fails = sum(c.level == "fail" for c in checks)
    warns = sum(c.level == "warn" for c in checks)
    oks = len(checks) - fails - warns
    summary = f"{oks} ok, {warns} warning(s), {fails} failure(s)"
    if fails:
        summary += ": something is broken; follow the 'fix:' lines above"
    elif warns:
        summary += ": working; the warnings say what could go wrong"
    else:
        summary += ": everything looks fine"
    return "\n".join([*lines, "", summary]) + "\n"


def run_doctor(settings: Settings, *, out: TextIO | None = None) -> int:
    """Run every check, print the table; 1 when something is broken, else 0."""
    stream = out or sys.stdout
    checks = anyio.run(collect, settings)
    secrets = list(_secrets(settings))
    checks = [Check(c.component, c.level, mask(c.detail, secrets), mask(c.fix, secrets)) for c in checks]
    width = shutil.get_terminal_size((100, 24)).columns
    color = stream.isatty() and not os.environ.get("NO_COLOR")
    stream.write(f"sessions-mcp {__version__} doctor\n\n")
    stream.write(render(checks, width=min(width, 140), color=color))
    stream.flush()
    return 1 if any(c.level == "fail" for c in checks) else 0
