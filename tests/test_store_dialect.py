"""The dialect layer: one SQL text, the two spellings, and bodies run without an event loop."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Generator

import pytest

from sessions_mcp.store.dialect import PG_NOW, marks, run_sync, to_postgres, to_sqlite
from sessions_mcp.store.migrations import MIGRATIONS


def test_spellings_per_engine() -> None:
    written = "SELECT now_ms(), GREATEST(a, ?) FROM t WHERE instr(x, ?) > 0 AND id IN (?, ?) FOR UPDATE"
    assert to_sqlite(written) == "SELECT now_ms(), max(a, ?) FROM t WHERE instr(x, ?) > 0 AND id IN (?, ?)"
    assert to_postgres(written) == (
        f"SELECT {PG_NOW}, GREATEST(a, %s) FROM t WHERE strpos(x, %s) > 0 AND id IN (%s, %s) FOR UPDATE"
    )
    assert to_sqlite("SELECT 1 FROM t LIMIT 1 FOR UPDATE SKIP LOCKED") == "SELECT 1 FROM t LIMIT 1"
    assert to_postgres("SELECT '100%' || ?") == "SELECT '100%%' || %s"  # psycopg reads % as a placeholder
    assert marks(3) == "?, ?, ?" and marks(1) == "?"


def test_the_translated_sqlite_spelling_runs() -> None:
    conn = sqlite3.connect(":memory:")
    conn.create_function("now_ms", 0, lambda: 42)
    conn.execute("CREATE TABLE t (id TEXT, a INTEGER, x TEXT)")
    conn.execute("INSERT INTO t VALUES ('k', 5, 'hello')")
    sql = "SELECT now_ms(), GREATEST(a, ?) FROM t WHERE instr(x, ?) > 0 AND id IN (?, ?) FOR UPDATE"
    assert conn.execute(to_sqlite(sql), (9, "ell", "k", "z")).fetchall() == [(42, 9)]


async def _no_suspension(x: int) -> int:
    async def inner() -> int:
        return x + 1

    return await inner() * 2


class _Suspend:
    """An awaitable that suspends once, as a real I/O wait would."""

    def __await__(self) -> Generator[None, None, None]:
        yield


async def _suspends() -> int:
    await _Suspend()
    return 1


def test_run_sync_runs_a_body_that_never_suspends_in_any_thread() -> None:
    assert run_sync(_no_suspension(1)) == 4
    out: list[int] = []
    worker = threading.Thread(target=lambda: out.append(run_sync(_no_suspension(2))))
    worker.start()
    worker.join()
    assert out == [6]


def test_run_sync_refuses_a_body_that_suspends() -> None:
    with pytest.raises(RuntimeError, match="suspends"):
        run_sync(_suspends())


def test_run_sync_passes_errors_through() -> None:
    async def boom() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        run_sync(boom())


def test_migration_ddl_has_no_unfilled_placeholder() -> None:
    for m in MIGRATIONS:
        for ddl in (m.sqlite(), m.postgres()):
            assert "{" not in ddl and "}" not in ddl, m.name
        assert 'COLLATE "C"' not in m.sqlite() and "BIGINT" not in m.sqlite()
