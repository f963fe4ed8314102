"""The value types the backend interface takes and returns (see :mod:`.base`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..models import Role, SessionRecord, Status, StoredMessage


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """What ``create_session`` asks of a backend."""

    principal: str
    prompt: str | None = None
    title: str | None = None
    model: str | None = None
    system: str | None = None
    agent: str | None = None
    workdir: str | None = None
    """The folder the session's agent works in (local named agents)."""
    dedupe_key: str | None = None
    """Stable key of the caller's idempotency key; backends that can, dedupe on it."""


@dataclass(frozen=True, slots=True)
class SendRequest:
    """What ``send_message`` asks of a backend.

    ``dedupe_key`` as in :class:`CreateRequest`; ``in_reply_to`` (an assistant message only) is
    the position of the last message the answerer read.
    """

    principal: str
    native_id: str
    text: str
    role: Role
    dedupe_key: str | None = None
    in_reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """What ``list_messages`` asks of a backend: at most ``limit`` messages after position ``after``."""

    principal: str
    native_id: str
    after: str | None
    limit: int
    roles: Sequence[Role] | None = None


@dataclass(frozen=True, slots=True)
class CreateResult:
    """The new session and the message(s) the create wrote."""

    session: SessionRecord
    written: list[StoredMessage] = field(default_factory=list[StoredMessage])


@dataclass(frozen=True, slots=True)
class SessionQuery:
    """Filters for ``list_sessions``."""

    principal: str
    statuses: frozenset[Status] | None = None
    query: str | None = None
    cursor: str | None = None
    limit: int = 20
