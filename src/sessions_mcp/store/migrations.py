"""Named schema migrations, applied in order and recorded in ``schema_migrations``.

A name is never reused or edited once released; a new change is a new entry at the end.
A database that records a name this list does not know was written by a newer version.
The SQL is kept portable between SQLite and PostgreSQL where it matters (the PostgreSQL
store keeps its own list with the same names).
"""

from __future__ import annotations

SQLITE_MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE sessions (
            id            TEXT PRIMARY KEY,
            owner         TEXT NOT NULL,
            title         TEXT,
            status        TEXT NOT NULL,
            error         TEXT,
            model         TEXT,
            system        TEXT,
            agent         TEXT,
            created_at    INTEGER NOT NULL,
            updated_at    INTEGER NOT NULL,
            last_seq      INTEGER NOT NULL DEFAULT 0,
            message_count INTEGER NOT NULL DEFAULT 0,
            dedupe_key    TEXT UNIQUE
        );
        CREATE INDEX sessions_by_owner ON sessions (owner, updated_at DESC, id DESC);
        CREATE INDEX sessions_by_status ON sessions (status, updated_at DESC);

        CREATE TABLE messages (
            session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            seq         INTEGER NOT NULL,
            id          TEXT NOT NULL UNIQUE,
            role        TEXT NOT NULL,
            text        TEXT NOT NULL,
            parts       TEXT NOT NULL,
            created_at  INTEGER NOT NULL,
            dedupe_key  TEXT UNIQUE,
            PRIMARY KEY (session_id, seq)
        );

        CREATE TABLE changes (
            seq         INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id  TEXT NOT NULL,
            owner       TEXT NOT NULL,
            kind        TEXT NOT NULL,
            writer      TEXT NOT NULL,
            at          INTEGER NOT NULL
        );

        CREATE TABLE idempotency (
            principal   TEXT NOT NULL,
            tool        TEXT NOT NULL,
            key         TEXT NOT NULL,
            params_hash TEXT NOT NULL,
            state       TEXT NOT NULL,
            result      TEXT,
            created_at  INTEGER NOT NULL,
            updated_at  INTEGER NOT NULL,
            PRIMARY KEY (principal, tool, key)
        );
        """,
    ),
    (
        "0002_agent_turns",
        # One row per session that an agent has answered: who runs its turn now (runner, pid,
        # host, lease) and the newest user message a finished turn answered (done_seq).
        """
        CREATE TABLE agent_turns (
            session_id  TEXT PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
            owner       TEXT NOT NULL,
            done_seq    INTEGER NOT NULL DEFAULT 0,
            upto_seq    INTEGER NOT NULL DEFAULT 0,
            runner      TEXT,
            pid         INTEGER,
            host        TEXT,
            lease_until INTEGER NOT NULL DEFAULT 0,
            started_at  INTEGER
        );
        CREATE INDEX agent_turns_by_runner ON agent_turns (runner)
        """,
    ),
    (
        "0003_mirror_outbox",
        # Durable outbox of the optional web-app mirror: one row per local session to copy out.
        # ``version`` counts local changes, ``synced_version`` the last one fully mirrored; the
        # remote progress (created, title, sent_seq, parent) is saved after every remote step.
        """
        CREATE TABLE mirror_outbox (
            session_id     TEXT PRIMARY KEY,
            owner          TEXT NOT NULL,
            version        INTEGER NOT NULL DEFAULT 1,
            synced_version INTEGER NOT NULL DEFAULT 0,
            created        INTEGER NOT NULL DEFAULT 0,
            title          TEXT,
            sent_seq       INTEGER NOT NULL DEFAULT 0,
            parent         TEXT NOT NULL DEFAULT 'root',
            attempts       INTEGER NOT NULL DEFAULT 0,
            next_at        INTEGER NOT NULL DEFAULT 0,
            lease_until    INTEGER NOT NULL DEFAULT 0,
            last_error     TEXT,
            updated_at     INTEGER NOT NULL
        );
        CREATE INDEX mirror_outbox_due ON mirror_outbox (next_at)
        """,
    ),
    (
        "0005_tasks",
        # MCP tasks (both protocol eras): a waiting create_session/send_message answered later.
        # ``first`` is the call's result once the user message was stored; ``result`` the final
        # CallToolResult; a finished task is kept until created_at + ttl_ms.
        """
        CREATE TABLE tasks (
            id             TEXT PRIMARY KEY,
            owner          TEXT NOT NULL,
            tool           TEXT NOT NULL,
            session_id     TEXT NOT NULL,
            era            TEXT NOT NULL,
            status         TEXT NOT NULL,
            status_message TEXT,
            first          TEXT NOT NULL,
            max_chars      INTEGER NOT NULL,
            result         TEXT,
            error          TEXT,
            created_at     INTEGER NOT NULL,
            updated_at     INTEGER NOT NULL,
            ttl_ms         INTEGER NOT NULL
        );
        CREATE INDEX tasks_by_owner ON tasks (owner, created_at DESC, id DESC);
        CREATE INDEX tasks_by_session ON tasks (session_id, status)
        """,
    ),
]
