"""PostgreSQL for the tests: a real server on 127.0.0.1, one fresh database per test session.

- ``SESSIONS_MCP_TEST_PG=postgresql://…`` names a server to use (any database on it; we
  create our own next to it).
- Otherwise the server on 127.0.0.1:5432 is used when one answers (trust auth, as the
  Debian package sets it up for local users; tried as ``postgres`` and as the current user).
- Otherwise (or with ``SESSIONS_MCP_TEST_PG=private``) a private cluster is created with
  ``initdb`` in a temp dir and ``postgres`` is started on a free loopback port; it is stopped
  by PID when the test process exits. ``scripts/setup-postgres.sh`` installs the binaries.

Each test session creates a database with a random name and drops it at exit; each test
(or replica group) gets its own schema in it via :func:`new_schema_url`, which is much
faster than a database per test and just as isolated.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

_lock = threading.Lock()
_server: PgServer | None = None


@dataclass
class PgServer:
    """A reachable server and the random database this test session owns on it."""

    admin_url: str
    """URL of a maintenance database (``postgres``) on the server."""
    database: str
    process: subprocess.Popen[bytes] | None = None
    datadir: str | None = None

    def url(self, schema: str | None = None) -> str:
        """URL of this session's database, optionally with ``search_path`` set to ``schema``."""
        parts = urlsplit(self.admin_url)
        query = f"options={quote(f'-csearch_path={schema}')}" if schema else ""
        return urlunsplit((parts.scheme, parts.netloc, f"/{self.database}", query, ""))

    def cleanup(self) -> None:
        """Drop the database; stop the private cluster (by PID) if we started one."""
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        except Exception as exc:
            print(f"tests/pg.py: could not drop test database {self.database}: {exc}", file=sys.stderr)
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.datadir:
            shutil.rmtree(self.datadir, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


def _find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_private() -> tuple[str, subprocess.Popen[bytes], str]:
    initdb, postgres = _find_binary("initdb"), _find_binary("postgres")
    if not initdb or not postgres:
        raise RuntimeError(
            "no PostgreSQL answers on 127.0.0.1:5432 and initdb/postgres are not installed; "
            "run scripts/setup-postgres.sh (installs Debian's postgresql package)"
        )
    datadir = tempfile.mkdtemp(prefix="sessions-mcp-pg-")
    user: str | None = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        import pwd

        user = "postgres" if "postgres" in {p.pw_name for p in pwd.getpwall()} else "nobody"
        shutil.chown(datadir, user=user)
    subprocess.run(
        [initdb, "-D", datadir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        user=user,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [postgres, "-D", datadir, "-p", str(port), "-k", datadir, "-c", "listen_addresses=127.0.0.1",
         "-c", "fsync=off", "-c", "max_connections=200"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=user,
    )  # fmt: skip
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while not _answers(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            shutil.rmtree(datadir, ignore_errors=True)
            raise RuntimeError(f"the private PostgreSQL in {datadir} did not start")
        time.sleep(0.1)
    return url, proc, datadir


def server() -> PgServer:
    """The test session's server and database (started/created on first use, removed at exit)."""
    global _server
    with _lock:
        if _server is not None:
            return _server
        wanted = os.environ.get("SESSIONS_MCP_TEST_PG", "")
        process: subprocess.Popen[bytes] | None = None
        datadir: str | None = None
        admin = ""
        if wanted and wanted != "private":
            parts = urlsplit(wanted)
            admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
            if not _answers(admin):
                raise RuntimeError(f"SESSIONS_MCP_TEST_PG: no PostgreSQL answers at {parts.hostname}:{parts.port}")
        elif not wanted:
            for candidate in ("postgresql://postgres@127.0.0.1:5432/postgres", "postgresql://127.0.0.1:5432/postgres"):
                if _answers(candidate):
                    admin = candidate
                    break
        if not admin:
            admin, process, datadir = _start_private()
        database = f"sessions_mcp_test_{secrets.token_hex(6)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        _server = PgServer(admin_url=admin, database=database, process=process, datadir=datadir)
        atexit.register(_server.cleanup)
        return _server


def new_schema_url() -> str:
    """A URL whose ``search_path`` is a new empty schema in the session database."""
    srv = server()
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(srv.url(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return srv.url(schema)


def drop_schema_url(url: str) -> None:
    """Drop the schema a :func:`new_schema_url` URL points at (best effort)."""
    options = dict(p.split("=", 1) for p in urlsplit(url).query.split("&") if "=" in p).get("options", "")
    schema = options.rpartition("%3D")[2] or options.rpartition("=")[2]
    if not schema.startswith("t_"):
        return
    with contextlib.suppress(Exception), psycopg.connect(server().url(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
