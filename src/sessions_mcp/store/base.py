"""The persistence interface of the local backend (and of idempotency records for every backend).

:class:`Store` is assembled from one class per concern, each holding that concern's SQL once
(see the package docstring); the engines :mod:`.sqlite` (default, embedded) and :mod:`.postgres`
(replicas) supply connections and transactions. Both give the same guarantees: each write is one
durable transaction; messages get a per-session sequence number allocated inside that
transaction, so positions are stable and a page costs the same at any depth; every write also
records a row in ``changes`` that other processes follow to wake their waiters and subscribers.
"""

from __future__ import annotations

from .agent_sessions import AgentSessionRow, AgentSessions
from .changes import ChangeLog
from .idempotency import Idempotency
from .messages import Messages
from .outbox import MirrorOutbox
from .rows import (
    TURN_LOST,
    Change,
    ChangeKind,
    IdemRecord,
    MessageRow,
    MirrorRow,
    MirrorStats,
    SessionRow,
    claim_is_dead,
    from_ms,
    new_writer_id,
    now_ms,
    pid_alive,
    this_host,
)
from .sessions import Sessions
from .tasks import TaskRow, Tasks
from .turns import Turns

__all__ = [
    "TURN_LOST",
    "AgentSessionRow",
    "Change",
    "ChangeKind",
    "IdemRecord",
    "MessageRow",
    "MirrorRow",
    "MirrorStats",
    "SessionRow",
    "Store",
    "TaskRow",
    "claim_is_dead",
    "from_ms",
    "new_writer_id",
    "now_ms",
    "pid_alive",
    "this_host",
]


class Store(Sessions, Messages, Idempotency, ChangeLog, Turns, MirrorOutbox, AgentSessions, Tasks):
    """Durable storage for local sessions. Every method is safe to call concurrently.

    A new concern (a table and its methods) is a new module with one class like these, added to
    the bases here, plus a named migration in :mod:`.migrations`.
    """
