"""``sessions-mcp db copy SRC.db postgresql://…``: move a SQLite store into PostgreSQL, verified.

Every table the two schemas share is copied (sessions first, then messages, idempotency
records, agent turns and whatever later migrations add), keeping ids, seqs, owners and
timestamps, in one PostgreSQL transaction: the target gets everything or nothing. The change
log is not copied (it only wakes live followers). Afterwards the rows of every table are
counted on both sides; a mismatch rolls the copy back.

The source is opened read-only and read in one transaction (a consistent snapshot even while
a server still writes to it; stop the servers first anyway, or their later writes stay behind).
A target that already holds sessions is refused, unless ``merge`` is set: then rows whose
keys already exist are kept as they are (useful to resume), and verification checks that
every source row is present.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..errors import ConfigError, SchemaTooNew, StoreError, StoreUnavailable
from . import is_postgres_url
from .postgres import POSTGRES_MIGRATIONS, PostgresStore, redact_url

SKIP = {"schema_migrations", "changes", "sqlite_sequence"}
"""Tables never copied: bookkeeping, and the change log (it only wakes live followers)."""


def _open_source(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise ConfigError(f"source {str(path)!r} does not exist; pass the SQLite file of the local store")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailable(f"cannot read {str(path)!r} as a SQLite database ({exc})") from None
    return conn


def _source_tables(conn: sqlite3.Connection, path: Path) -> dict[str, list[str]]:
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    if "schema_migrations" not in names or "sessions" not in names:
        raise StoreUnavailable(f"{str(path)!r} is not a sessions-mcp store (no sessions table)")
    applied = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
    unknown = sorted(applied - {n for n, _ in POSTGRES_MIGRATIONS})
    if unknown:
        raise SchemaTooNew(
            f"{str(path)!r} was written by a newer sessions-mcp (migration {unknown[-1]!r}); "
            "upgrade sessions-mcp before copying"
        )
    return {t: [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')] for t in names if t not in SKIP}


async def _copy(source: Path, target: str, *, merge: bool, out: Any) -> int:
    store = PostgresStore(target)
    try:
        await store.open()  # creates or migrates the schema, exactly as a server would
    finally:
        await store.close()
    src = _open_source(source)
    started = time.monotonic()
    try:
        src.execute("BEGIN")  # one snapshot of the source for the whole copy
        tables = _source_tables(src, source)
        async with await psycopg.AsyncConnection.connect(target) as pg:
            target_cols: dict[str, list[str]] = {}
            rows = await (
                await pg.execute(
                    "SELECT table_name, column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
                )
            ).fetchall()
            for table, column in rows:
                target_cols.setdefault(table, []).append(column)
            order = ["sessions", *sorted(t for t in tables if t != "sessions" and t in target_cols)]
            if not merge:
                for table in order:
                    found = await (
                        await pg.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
                    ).fetchone()
                    if found and found[0]:
                        raise ConfigError(
                            f"the target {redact_url(target)} is not empty ({found[0]} rows in {table}); copy into "
                            "an empty database (or schema), or pass --merge to add what is missing and keep the rest"
                        )
            skipped = sorted(t for t in tables if t not in target_cols)
            report: list[tuple[str, int, int]] = []
            for table in order:
                cols = [c for c in tables[table] if c in target_cols[table]]
                copied, present = await _copy_table(pg, src, table, cols, merge=merge)
                report.append((table, copied, present))
            bad = [(t, c, p) for t, c, p in report if c != p]
            if bad:
                await pg.rollback()
                for table, copied, present in bad:
                    print(f"verification failed: {table}: {copied} rows in the source, {present} in the target",
                          file=sys.stderr)  # fmt: skip
                print("nothing was copied (rolled back)", file=sys.stderr)
                return 1
            await pg.commit()
    except StoreError:
        raise
    except ConfigError:
        raise
    except psycopg.Error as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailable(
            f"copying into {redact_url(target)} failed, nothing was copied: {message.replace(target, redact_url(target))}"
        ) from None
    finally:
        src.close()
    print(f"copied {source} -> {redact_url(target)} in {time.monotonic() - started:.1f}s", file=out)
    for table, copied, _ in report:
        print(f"  {table:<16} {copied:>9} rows  verified", file=out)
    for table in skipped:
        print(f"  {table:<16} (not in the PostgreSQL schema of this version; skipped)", file=out)
    print("next: set SESSIONS_MCP_LOCAL__DB to the PostgreSQL URL on every replica and restart them", file=out)
    return 0


async def _copy_table(
    pg: psycopg.AsyncConnection[Any], src: sqlite3.Connection, table: str, cols: list[str], *, merge: bool
) -> tuple[int, int]:
    """Copy one table through a temporary table; returns (source rows, of them present in the target)."""
    tmp = f"_copy_{table}"
    ident = sql.Identifier(table)
    tmp_ident = sql.Identifier(tmp)
    col_list = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    await pg.execute(
        sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(tmp_ident, ident)
    )
    count = 0
    quoted = ", ".join(f'"{c}"' for c in cols)
    async with pg.cursor() as cur, cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(tmp_ident, col_list)) as copy:
        for row in src.execute(f'SELECT {quoted} FROM "{table}"'):
            await copy.write_row(row)
            count += 1
    pk = await (
        await pg.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
            (table,),
        )
    ).fetchall()
    keys = [r[0] for r in pk] or cols
    conflict = sql.SQL(" ON CONFLICT DO NOTHING") if merge else sql.SQL("")
    await pg.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(ident, col_list, col_list, tmp_ident) + conflict
    )
    match = sql.SQL(" AND ").join(sql.SQL("t.{} = s.{}").format(sql.Identifier(k), sql.Identifier(k)) for k in keys)
    row = await (
        await pg.execute(
            sql.SQL("SELECT count(*) FROM {} s WHERE EXISTS (SELECT 1 FROM {} t WHERE {})").format(
                tmp_ident, ident, match
            )
        )
    ).fetchone()
    present = int(row[0]) if row else 0
    if not merge:  # the table was empty: it must now hold exactly the source's rows
        total = await (await pg.execute(sql.SQL("SELECT count(*) FROM {}").format(ident))).fetchone()
        present = int(total[0]) if total else 0
    return count, present


def run_copy(source: str, target: str, *, merge: bool = False) -> int:
    """Copy the SQLite store at ``source`` into the PostgreSQL database ``target`` and verify counts.

    Returns the exit status: 0 when every table verified, 1 when verification failed (nothing
    is kept). Raises :class:`~sessions_mcp.errors.SessionsError` with advice for bad arguments,
    a non-empty target (without ``merge``) or an unreachable server.
    """
    if not is_postgres_url(target):
        raise ConfigError(f"target {redact_url(target)!r} is not a postgresql:// URL")
    return asyncio.run(_copy(Path(source).expanduser(), target, merge=merge, out=sys.stdout))
