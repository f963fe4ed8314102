"""The persistence interface of the local backend (and of idempotency records for every backend).

Two implementations: :mod:`.sqlite` (default, embedded) and :mod:`.postgres` (replicas).
Both give the same guarantees: each write is one durable transaction; messages get a
per-session sequence number allocated inside that transaction, so positions are stable and
a page costs the same at any depth; every write also records a row in ``changes`` that other
processes follow to wake their waiters and subscribers.
"""

from __future__ import annotations

import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

from ..models import Role, Status

ChangeKind = Literal["created", "message", "status", "renamed", "deleted"]


def now_ms() -> int:
    """Wall-clock Unix milliseconds."""
    return int(datetime.now(UTC).timestamp() * 1000)


def new_writer_id() -> str:
    """A random id for one process's writer."""
    return secrets.token_hex(8)


def from_ms(ms: int) -> datetime:
    """Unix milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class SessionRow(NamedTuple):
    """A stored session (a named tuple: built once per row read, ~4x cheaper than a frozen dataclass)."""

    id: str
    owner: str
    title: str | None
    status: Status
    error: str | None
    model: str | None
    system: str | None
    agent: str | None
    created_at: int
    updated_at: int
    last_seq: int
    message_count: int


class MessageRow(NamedTuple):
    """A stored message; ``parts`` is the JSON list of neutral parts (a named tuple, like SessionRow)."""

    session_id: str
    seq: int
    id: str
    role: Role
    text: str
    parts: list[dict[str, Any]]
    created_at: int


@dataclass(frozen=True, slots=True)
class Change:
    """One row of the change log: something happened to a session."""

    seq: int
    session_id: str
    owner: str
    kind: ChangeKind
    writer: str = ""
    """The :attr:`Store.writer_id` of the process that wrote it."""


@dataclass(frozen=True, slots=True)
class AgentSessionRow:
    """What the local backend keeps about a session of a named agent."""

    workdir: str | None
    state: dict[str, Any]
    """The agent's own ids (e.g. ``acp_session_id``), JSON."""
    pending: dict[str, Any] | None
    """The request the agent waits on (a ``models.Pending`` as JSON), or None."""


def agent_session_row(row: Any) -> AgentSessionRow | None:
    """An ``agent_sessions`` row (workdir, state, pending) as read by either store."""
    if row is None:
        return None
    return AgentSessionRow(row[0], json.loads(row[1] or "{}"), json.loads(row[2]) if row[2] else None)


def agent_session_upsert(
    session_id: str,
    workdir: str | None,
    state: dict[str, Any] | None,
    pending: dict[str, Any] | None,
    clear_pending: bool,
) -> tuple[str, tuple[Any, ...]]:
    """The one statement (``?`` placeholders) that writes an ``agent_sessions`` row; None keeps a column."""
    new_pending = None if clear_pending else (json.dumps(pending) if pending is not None else None)
    keep_pending = not clear_pending and pending is None
    sql = (
        "INSERT INTO agent_sessions (session_id, workdir, state, pending) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (session_id) DO UPDATE SET"
        " workdir = COALESCE(excluded.workdir, agent_sessions.workdir),"
        " state = CASE WHEN ? THEN agent_sessions.state ELSE excluded.state END,"
        " pending = CASE WHEN ? THEN agent_sessions.pending ELSE excluded.pending END"
    )
    args = (session_id, workdir, json.dumps(state or {}), new_pending, state is None, keep_pending)
    return sql, args


@dataclass(frozen=True, slots=True)
class IdemRecord:
    """A stored idempotency record."""

    params_hash: str
    state: Literal["pending", "done"]
    result: str | None
    updated_at: int


@dataclass(slots=True)
class MirrorRow:
    """One session in the web-app mirror outbox."""

    session_id: str
    owner: str
    version: int
    created: bool
    title: str | None
    sent_seq: int
    parent: str
    attempts: int
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class MirrorStats:
    """The outbox at a glance."""

    pending: int
    failed: int
    mirrored: int
    last_error: str | None = None


class Store(ABC):
    """Durable storage for local sessions. Every method is safe to call concurrently."""

    location: str
    """Where the data lives, for messages (a path or a redacted URL)."""
    writer_id: str
    """Random id of this process's writer; the change log records it so followers skip their own."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and migrate. Raises a :class:`~sessions_mcp.errors.StoreError` with advice."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    # sessions ---------------------------------------------------------------------------------

    @abstractmethod
    async def create_session(
        self,
        *,
        owner: str,
        title: str | None,
        model: str | None,
        system: str | None,
        agent: str | None,
        status: Status,
        first_message: tuple[Role, list[dict[str, Any]], str] | None = None,
        dedupe_key: str | None = None,
    ) -> tuple[SessionRow, list[MessageRow]]:
        """Create a session (and its first message, as ``(role, parts, text)``) in one transaction.

        With ``dedupe_key`` already used by this store, returns the earlier session instead.
        """

    @abstractmethod
    async def get_session(self, owner: str, session_id: str) -> SessionRow | None:
        """The session, or None when unknown, deleted or owned by someone else."""

    @abstractmethod
    async def list_sessions(
        self,
        owner: str,
        *,
        statuses: Sequence[Status] | None,
        query: str | None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[SessionRow]:
        """Most recently updated first; ``after`` is the (updated_at, id) keyset of the last row seen."""

    @abstractmethod
    async def update_session(
        self,
        owner: str,
        session_id: str,
        *,
        title: str | None = None,
        status: Status | None = None,
        error: str | None = None,
        clear_error: bool = False,
    ) -> SessionRow | None:
        """Change title and/or status; None when the session is unknown."""

    @abstractmethod
    async def delete_session(self, owner: str, session_id: str) -> bool:
        """Delete the session and its messages; False when it was unknown."""

    # messages ---------------------------------------------------------------------------------

    @abstractmethod
    async def append_message(
        self,
        owner: str,
        session_id: str,
        *,
        role: Role,
        parts: list[dict[str, Any]],
        text: str,
        new_status: Status | None,
        error: str | None = None,
        dedupe_key: str | None = None,
        unanswered_after_seq: int | None = None,
    ) -> tuple[SessionRow, MessageRow] | None:
        """Append a message and set the session status, in one transaction.

        With ``unanswered_after_seq``, a ``new_status`` of ``idle`` becomes ``awaiting_reply``
        when a user message with a higher seq exists (checked under the write lock): the reply
        answered an earlier question, a newer one is still open.

        Returns None when the session is unknown. With a ``dedupe_key`` this store has seen,
        returns the earlier message and writes nothing.
        """

    @abstractmethod
    async def list_messages(
        self,
        owner: str,
        session_id: str,
        *,
        after_seq: int,
        limit: int,
        roles: Sequence[Role] | None = None,
    ) -> tuple[SessionRow, list[MessageRow], bool] | None:
        """Messages with seq > after_seq, oldest first, and whether more follow; None if unknown."""

    # idempotency ------------------------------------------------------------------------------

    @abstractmethod
    async def idem_claim(
        self, principal: str, tool: str, key: str, params_hash: str, *, stale_after_ms: int
    ) -> IdemRecord | None:
        """Claim a key. Returns None when the caller now owns it (new, or stale and taken over);
        otherwise the existing record, which the caller must not overwrite."""

    @abstractmethod
    async def idem_complete(self, principal: str, tool: str, key: str, result: str) -> None:
        """Store the result of a claimed key."""

    @abstractmethod
    async def idem_release(self, principal: str, tool: str, key: str) -> None:
        """Forget a pending claim after the call failed (so the caller may retry)."""

    # change log -------------------------------------------------------------------------------

    @abstractmethod
    async def last_change(self) -> int:
        """The newest change sequence number (0 when none)."""

    @abstractmethod
    async def changes_since(self, seq: int, *, limit: int = 1000) -> list[Change]:
        """Changes after ``seq``, oldest first."""

    @abstractmethod
    async def external_write_seen(self) -> bool:
        """Cheap check: did another connection commit since the last call? (may say True spuriously)"""

    async def prune_changes(self, older_than_ms: int = 3_600_000) -> None:  # noqa: B027
        """Drop old change-log rows (optional)."""

    # diagnostics ------------------------------------------------------------------------------

    @abstractmethod
    async def describe(self) -> dict[str, Any]:
        """Facts for ``doctor``: location, schema version, size, ..."""

    # agent turns ------------------------------------------------------------------------------
    #
    # A turn is "run the agent for the user messages of a session up to seq N". At most one
    # turn per session is claimed at a time, by one runner (a random id per process), under a
    # lease the runner renews; a finished turn records N as done so nobody runs it again.

    @abstractmethod
    async def turn_claim(
        self, owner: str, session_id: str, *, upto_seq: int, runner: str, pid: int, host: str, lease_ms: int
    ) -> bool:
        """Claim the turn that answers the session's messages up to ``upto_seq``, in one transaction.

        True when ``runner`` now holds it (lease until now + ``lease_ms``). False, writing
        nothing, when the session is unknown to ``owner``, when any runner (this one included)
        holds a live claim on the session, or when a finished turn already answered up to
        ``upto_seq`` or later. A claim whose holder is dead (see :func:`claim_is_dead`) is taken over.
        """

    @abstractmethod
    async def turn_heartbeat(self, runner: str, session_ids: Sequence[str], *, lease_ms: int) -> list[str]:
        """Extend the leases ``runner`` holds on these sessions to now + ``lease_ms``.

        Returns the ids whose claim ``runner`` still holds *and* whose session status is still
        ``running``; the runner stops every other turn (interrupted or recovered elsewhere).
        """

    @abstractmethod
    async def turn_release(self, session_id: str, *, runner: str) -> int:
        """End ``runner``'s claim on the session, recording its ``upto_seq`` as done.

        Returns the seq of the session's newest user message (0 when it has none or is gone),
        so the runner can tell whether a message arrived during the turn and claim the next one.
        Releasing a claim that ``runner`` does not hold changes nothing.
        """

    @abstractmethod
    async def turn_recover(self, *, host: str, error: str) -> list[tuple[str, str]]:
        """Fail the turns whose runner died, in one transaction.

        A claim is dead when :func:`claim_is_dead` says so (lease expired, or held on ``host``
        by a process id that no longer exists). Each dead claim is released (its turn recorded
        as done, never run again) and, when its session is still ``running``, the session
        becomes ``failed`` with ``error`` and a ``status`` change is logged. Returns the
        ``(session_id, owner)`` of the sessions it failed. :meth:`open` calls it once with
        :func:`this_host` and :data:`TURN_LOST`, so a turn cut off by a crash is failed the next
        time any process opens the database; agent runners also call it periodically.
        """

    async def agent_session(self, session_id: str) -> AgentSessionRow | None:
        """The named-agent state of a session, or None when nothing was stored."""
        raise NotImplementedError("this store keeps no agent state")

    async def agent_session_put(
        self,
        session_id: str,
        *,
        workdir: str | None = None,
        state: dict[str, Any] | None = None,
        pending: dict[str, Any] | None = None,
        clear_pending: bool = False,
    ) -> None:
        """Create or update a session's named-agent row; a None argument keeps that column."""
        raise NotImplementedError("this store keeps no agent state")

    async def turn_orphans(self, *, agents: Sequence[str], older_than_ms: int) -> list[tuple[str, str]]:
        """Sessions waiting for a turn that nobody started (optional; the default finds none).

        ``(session_id, owner)`` of up to 100 sessions whose status is ``running``, whose agent is
        one of ``agents``, that were last updated more than ``older_than_ms`` ago, and whose
        newest user message no claim holds or has answered (no live claim, ``done_seq`` below
        it). That happens when the process that stored the message died, or its call was
        cancelled, before the turn was claimed. Runners claim these turns like any other.
        """
        return []

    # web-app mirror outbox (optional: stores without it raise NotImplementedError) ---------------

    async def mirror_enqueue(self, session_id: str, owner: str) -> None:
        """Record that a local session changed and must be mirrored (durable, idempotent)."""
        raise NotImplementedError("this store has no mirror outbox")

    async def mirror_claim(self, *, lease_ms: int, limit: int = 20) -> list[MirrorRow]:
        """Lease the due rows with unmirrored changes (another process skips leased rows)."""
        raise NotImplementedError("this store has no mirror outbox")

    async def mirror_progress(
        self,
        session_id: str,
        *,
        created: bool | None = None,
        title: str | None = None,
        sent_seq: int | None = None,
        parent: str | None = None,
    ) -> None:
        """Save one remote step (so a restart never repeats it)."""
        raise NotImplementedError("this store has no mirror outbox")

    async def mirror_done(self, session_id: str, version: int) -> None:
        """Mark the changes up to ``version`` mirrored; clear attempts, error and lease."""
        raise NotImplementedError("this store has no mirror outbox")

    async def mirror_failed(self, session_id: str, error: str, *, retry_at_ms: int) -> None:
        """Count a failed attempt, keep the (redacted) error, release the lease until ``retry_at_ms``."""
        raise NotImplementedError("this store has no mirror outbox")

    async def mirror_forget(self, session_id: str) -> None:
        """Drop a session's row (the session was deleted locally)."""
        raise NotImplementedError("this store has no mirror outbox")

    async def mirror_next_due(self) -> int | None:
        """When the next row with unmirrored changes is due (Unix ms), or None."""
        raise NotImplementedError("this store has no mirror outbox")

    async def mirror_stats(self, *, failed_after: int) -> MirrorStats:
        """Counts for diagnostics: pending rows, rows failing ``failed_after`` times or more."""
        raise NotImplementedError("this store has no mirror outbox")


TURN_LOST = (
    "the agent turn was cut off: the sessions-mcp process running it stopped before it finished; "
    "send the message again to retry"
)
"""The ``error`` of a session whose turn died with its process."""


def this_host() -> str:
    """This machine's name, as recorded with a turn claim (process ids are only meaningful here)."""
    import socket

    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    import os

    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except OSError:
        return False
    try:  # a killed process its parent has not reaped yet still answers kill(0): a zombie
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[:1] != ["Z"]
    except OSError:
        return True  # no /proc (macOS): trust kill(0)


def claim_is_dead(*, claim_host: str | None, claim_pid: int | None, lease_until: int, host: str, now: int) -> bool:
    """Whether a turn claim's holder is gone: its lease ran out, or it ran on ``host`` and its process is gone."""
    if lease_until < now:
        return True
    return claim_host == host and claim_pid is not None and not pid_alive(claim_pid)
