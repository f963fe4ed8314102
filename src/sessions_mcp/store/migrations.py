"""Named schema migrations, applied in order and recorded in ``schema_migrations``.

A name is never reused or edited once released; a new change (say a ``tasks`` table) is a new
:class:`Migration` at the end, its DDL written once for both engines. A database that records a name this list does not know was written by
a newer version. :func:`migrate` applies them the same way on both engines.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from ..errors import SchemaTooNew
from .dialect import Tx
from .rows import now_ms

log = logging.getLogger(__name__)


class Migration(NamedTuple):
    """One released schema change: DDL written once, with ``{bigint}``, ``{key}`` and ``{serial}``
    for the types that differ (see :data:`TYPES`), plus statements only PostgreSQL needs."""

    name: str
    ddl: str
    postgres_only: str = ""

    def sqlite(self) -> str:
        """The DDL for SQLite."""
        return self.ddl.format(**TYPES["sqlite"])

    def postgres(self) -> str:
        """The DDL for PostgreSQL."""
        return self.ddl.format(**TYPES["postgres"]) + self.postgres_only


TYPES = {
    "sqlite": {"bigint": "INTEGER", "key": "TEXT", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    # byte order ("C") keys: keyset pages and comparisons agree with SQLite's
    "postgres": {"bigint": "BIGINT", "key": 'TEXT COLLATE "C"', "serial": "BIGSERIAL PRIMARY KEY"},
}
"""What the type placeholders of :attr:`Migration.ddl` become on each engine."""

MIGRATIONS: list[Migration] = [
    Migration(
        "0001_initial",
        """
        CREATE TABLE sessions (
            id            {key} PRIMARY KEY,
            owner         {key} NOT NULL,
            title         TEXT,
            status        TEXT NOT NULL,
            error         TEXT,
            model         TEXT,
            system        TEXT,
            agent         TEXT,
            created_at    {bigint} NOT NULL,
            updated_at    {bigint} NOT NULL,
            last_seq      {bigint} NOT NULL DEFAULT 0,
            message_count {bigint} NOT NULL DEFAULT 0,
            dedupe_key    TEXT UNIQUE
        );
        CREATE INDEX sessions_by_owner ON sessions (owner, updated_at DESC, id DESC);
        CREATE INDEX sessions_by_status ON sessions (status, updated_at DESC);

        CREATE TABLE messages (
            session_id  {key} NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            seq         {bigint} NOT NULL,
            id          TEXT NOT NULL UNIQUE,
            role        TEXT NOT NULL,
            text        TEXT NOT NULL,
            parts       TEXT NOT NULL,
            created_at  {bigint} NOT NULL,
            dedupe_key  TEXT UNIQUE,
            PRIMARY KEY (session_id, seq)
        );

        CREATE TABLE changes (
            seq         {serial},
            session_id  TEXT NOT NULL,
            owner       TEXT NOT NULL,
            kind        TEXT NOT NULL,
            writer      TEXT NOT NULL,
            at          {bigint} NOT NULL
        );

        CREATE TABLE idempotency (
            principal   TEXT NOT NULL,
            tool        TEXT NOT NULL,
            key         TEXT NOT NULL,
            params_hash TEXT NOT NULL,
            state       TEXT NOT NULL,
            result      TEXT,
            created_at  {bigint} NOT NULL,
            updated_at  {bigint} NOT NULL,
            PRIMARY KEY (principal, tool, key)
        );
        """,
        postgres_only="""
        CREATE INDEX changes_by_at ON changes (at);
        CREATE INDEX idempotency_by_updated ON idempotency (updated_at);
        """,
    ),
    # One row per session that an agent has answered: who runs its turn now (runner, pid, host,
    # lease) and the newest user message a finished turn answered (done_seq). On PostgreSQL
    # lease_until is in the database's clock (not the replica's), so skewed replicas agree.
    Migration(
        "0002_agent_turns",
        """
        CREATE TABLE agent_turns (
            session_id  {key} PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
            owner       TEXT NOT NULL,
            done_seq    {bigint} NOT NULL DEFAULT 0,
            upto_seq    {bigint} NOT NULL DEFAULT 0,
            runner      TEXT,
            pid         INTEGER,
            host        TEXT,
            lease_until {bigint} NOT NULL DEFAULT 0,
            started_at  {bigint}
        );
        CREATE INDEX agent_turns_by_runner ON agent_turns (runner);
        """,
    ),
    # Durable outbox of the optional web-app mirror: one row per local session to copy out.
    # ``version`` counts local changes, ``synced_version`` the last one fully mirrored; the
    # remote progress (created, title, sent_seq, parent) is saved after every remote step.
    Migration(
        "0003_mirror_outbox",
        """
        CREATE TABLE mirror_outbox (
            session_id     {key} PRIMARY KEY,
            owner          TEXT NOT NULL,
            version        {bigint} NOT NULL DEFAULT 1,
            synced_version {bigint} NOT NULL DEFAULT 0,
            created        INTEGER NOT NULL DEFAULT 0,
            title          TEXT,
            sent_seq       {bigint} NOT NULL DEFAULT 0,
            parent         TEXT NOT NULL DEFAULT 'root',
            attempts       INTEGER NOT NULL DEFAULT 0,
            next_at        {bigint} NOT NULL DEFAULT 0,
            lease_until    {bigint} NOT NULL DEFAULT 0,
            last_error     TEXT,
            updated_at     {bigint} NOT NULL
        );
        CREATE INDEX mirror_outbox_due ON mirror_outbox (next_at);
        """,
    ),
    # Per session of a named agent: the folder it works in, the agent's own state (its ACP session
    # id, so a follow-up after a restart continues the same conversation) and the permission
    # request or question it waits on (JSON of models.Pending, NULL when none).
    Migration(
        "0004_agent_sessions",
        """
        CREATE TABLE agent_sessions (
            session_id  {key} PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
            workdir     TEXT,
            state       TEXT NOT NULL DEFAULT '',
            pending     TEXT
        );
        """,
    ),
    # MCP tasks (both protocol eras): a waiting create_session/send_message answered later.
    # ``first`` is the call's result once the user message was stored, ``result`` the final
    # CallToolResult (JSON); a finished task is kept until created_at + ttl_ms.
    Migration(
        "0005_tasks",
        """
        CREATE TABLE tasks (
            id             {key} PRIMARY KEY,
            owner          {key} NOT NULL,
            tool           TEXT NOT NULL,
            session_id     {key} NOT NULL,
            era            TEXT NOT NULL,
            status         TEXT NOT NULL,
            status_message TEXT,
            first          TEXT NOT NULL,
            max_chars      INTEGER NOT NULL,
            result         TEXT,
            error          TEXT,
            created_at     {bigint} NOT NULL,
            updated_at     {bigint} NOT NULL,
            ttl_ms         {bigint} NOT NULL
        );
        CREATE INDEX tasks_by_owner ON tasks (owner, created_at DESC, id DESC);
        CREATE INDEX tasks_by_session ON tasks (session_id, status);
        """,
    ),
]

SQLITE_MIGRATIONS: list[tuple[str, str]] = [(m.name, m.sqlite()) for m in MIGRATIONS]
"""``(name, SQLite DDL)`` in order."""
POSTGRES_MIGRATIONS: list[tuple[str, str]] = [(m.name, m.postgres()) for m in MIGRATIONS]
"""``(name, PostgreSQL DDL)`` in order; the names match :data:`SQLITE_MIGRATIONS` one to one."""


async def migrate(tx: Tx, ddl: list[tuple[str, str]], *, where: str, bigint: str) -> None:
    """Apply the migrations of ``ddl`` this database lacks, inside the caller's write transaction.

    ``where`` names the database in messages; ``bigint`` is the engine's type for the timestamp.
    Raises :class:`SchemaTooNew` when the database records a migration this version does not know.
    """
    await tx.run(f"CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at {bigint} NOT NULL)")
    applied = {r[0] for r in await tx.all("SELECT name FROM schema_migrations")}
    unknown = sorted(applied - {name for name, _ in ddl})
    if unknown:
        raise SchemaTooNew(
            f"{where} was written by a newer sessions-mcp (migration {unknown[-1]!r} is unknown to this version); "
            "upgrade sessions-mcp or set SESSIONS_MCP_LOCAL__DB to another database"
        )
    for name, script in ddl:
        if name not in applied:
            await tx.script(script)
            await tx.run("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, now_ms()))
            log.info("applied migration %s to %s", name, where)
