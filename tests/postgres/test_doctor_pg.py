"""``sessions-mcp doctor`` on a PostgreSQL store: healthy, newer schema, password never shown."""

from __future__ import annotations

import io
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg

from sessions_mcp.doctor import run_doctor
from sessions_mcp.settings import Settings


def doctor(settings: Settings) -> tuple[int, str]:
    out = io.StringIO()
    return run_doctor(settings, out=out), out.getvalue()


def test_healthy_postgres_store(pg_settings: Callable[..., Settings]) -> None:
    code, out = doctor(pg_settings())
    assert code == 0, out
    assert "PostgreSQL" in out and "(current)" in out
    assert "0 session(s), 0 message(s)" in " ".join(out.split())  # wrapping varies with the width


def test_newer_postgres_schema_fails(pg_settings: Callable[..., Settings], pg_url: str) -> None:
    code, _ = doctor(pg_settings())  # creates the tables
    assert code == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_from_the_future', 0)")
    code, out = doctor(pg_settings())
    assert code == 1, out
    flat = " ".join(out.split())
    assert "newer sessions-mcp" in flat and "9999_from_the_future" in flat and "fix: upgrade sessions-mcp" in flat


def test_password_is_never_printed(pg_settings: Callable[..., Settings], pg_url: str) -> None:
    parts = urlsplit(pg_url)
    user = parts.netloc.rsplit("@", 1)[0].split(":")[0] if "@" in parts.netloc else ""
    host = parts.netloc.rsplit("@", 1)[-1]
    password = "hunter2-very-secret-password"
    with_password = urlunsplit((parts.scheme, f"{user or 'postgres'}:{password}@{host}", *parts[2:]))
    _, out = doctor(pg_settings(local={"db": with_password}))
    assert password not in out
    assert "PostgreSQL" in out
