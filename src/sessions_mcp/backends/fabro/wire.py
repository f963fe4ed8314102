"""Fabro's wire types (the ``Sessions`` tag of ``fabro-api.yaml``). They never leave this package.

Parsing is tolerant of additions (unknown fields are ignored) and strict about what we rely on.
Request bodies are serialised without unset optional fields: Fabro rejects JSON ``null`` there.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator

_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: Any) -> datetime:
    """An RFC 3339 timestamp (``Z`` or an offset, 0-9 fractional digits) as an aware UTC datetime.

    chrono writes up to nanoseconds; Python keeps microseconds, so extra digits are dropped.
    """
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = _FRACTION.sub(r"\1", value.strip())
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        dt = datetime.fromisoformat(text)
    else:
        raise ValueError(f"expected an RFC 3339 timestamp, got {type(value).__name__}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


Timestamp = Annotated[datetime, BeforeValidator(parse_time)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ModelReference(_Wire):
    """``ModelReference``."""

    id: str


class CreateSessionRequest(_Wire):
    """``CreateSessionRequest``: the first prompt travels in ``content``."""

    content: str
    model: str | None = None
    system: str | None = None

    def body(self) -> dict[str, Any]:
        """The JSON body, without optional fields that have no value."""
        return self.model_dump(exclude_none=True)


class CreateSessionResponse(_Wire):
    """``CreateSessionResponse`` (201)."""

    id: str
    title: str
    model: ModelReference
    created_at: Timestamp
    updated_at: Timestamp


class SessionListItem(_Wire):
    """``SessionListItem``."""

    id: str
    title: str
    model: ModelReference
    last_message_preview: str = ""
    created_at: Timestamp
    updated_at: Timestamp


class PaginationMeta(_Wire):
    """``PaginationMeta``."""

    has_more: bool


class PaginatedSessionList(_Wire):
    """``PaginatedSessionList``."""

    data: list[SessionListItem]
    meta: PaginationMeta


class ToolUse(_Wire):
    """``ToolUse``: one tool call with its result."""

    id: str
    tool_name: str
    input: str
    result: str
    is_error: bool
    duration_ms: int | None = None


class UserTurn(_Wire):
    """``UserTurn``."""

    kind: Literal["user"]
    content: str
    created_at: Timestamp


class AssistantTurn(_Wire):
    """``AssistantTurn``."""

    kind: Literal["assistant"]
    content: str
    created_at: Timestamp


class ToolTurn(_Wire):
    """``ToolTurn``."""

    kind: Literal["tool"]
    tools: list[ToolUse]
    created_at: Timestamp


class UnknownTurn(_Wire):
    """A turn kind newer than this client; kept as a raw part so nothing is lost."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str
    created_at: Timestamp | None = None


Turn = UserTurn | AssistantTurn | ToolTurn | UnknownTurn


def parse_turn(data: Any) -> Turn:
    """One ``SessionTurn`` (dispatching on ``kind``)."""
    kind: Any = cast("dict[str, Any]", data).get("kind") if isinstance(data, dict) else None
    match kind:
        case "user":
            return UserTurn.model_validate(data)
        case "assistant":
            return AssistantTurn.model_validate(data)
        case "tool":
            return ToolTurn.model_validate(data)
        case _:
            return UnknownTurn.model_validate(data)


class SessionDetail(_Wire):
    """``SessionDetail``: the session with all its turns."""

    id: str
    title: str
    model: ModelReference
    created_at: Timestamp
    updated_at: Timestamp
    turns: list[Annotated[Turn, PlainValidator(parse_turn)]] = Field(default_factory=list[Turn])


class SendMessageRequest(_Wire):
    """``SendMessageRequest``."""

    content: str

    def body(self) -> dict[str, Any]:
        """The JSON body."""
        return self.model_dump(exclude_none=True)


class SendMessageResponse(_Wire):
    """``SendMessageResponse`` (202)."""

    accepted: bool


class ErrorEntry(_Wire):
    """``ErrorResponseEntry``: ``status`` is a string."""

    status: str = ""
    title: str = ""
    detail: str = ""


class ErrorResponse(_Wire):
    """``ErrorResponse``."""

    errors: list[ErrorEntry]
