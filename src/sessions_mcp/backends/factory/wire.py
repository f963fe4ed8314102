"""Wire models of Factory's Sessions API v0 (``/api/v0/sessions``), as documented in
``docs/SESSION-APIS.md`` §1A. Parsed leniently: unknown fields are kept (``extra="allow"``) and
fields the docs mark as uncertain are optional. These types never leave this package.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

WireStatus = Literal["idle", "pending", "running"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Pagination(_Wire):
    """The cursor envelope of every list."""

    has_more: bool = Field(default=False, alias="hasMore")
    next_cursor: str | None = Field(default=None, alias="nextCursor")


class SessionSettings(_Wire):
    """Model and agent settings of a session (all optional on the wire)."""

    model: str | None = None
    reasoning_effort: str | None = Field(default=None, alias="reasoningEffort")
    interaction_mode: str | None = Field(default=None, alias="interactionMode")
    autonomy_level: str | None = Field(default=None, alias="autonomyLevel")


class WireSession(_Wire):
    """``Session`` as returned by create/get/list/update."""

    session_id: str = Field(alias="sessionId")
    status: str = "idle"
    """``idle | pending | running``; anything else is treated as running (see mapping)."""
    message_count: int = Field(default=0, alias="messageCount")
    created_at: int = Field(alias="createdAt")
    updated_at: int | None = Field(default=None, alias="updatedAt")
    title: str | None = None
    completed_at: int | None = Field(default=None, alias="completedAt")
    computer_id: str | None = Field(default=None, alias="computerId")
    session_settings: SessionSettings | None = Field(default=None, alias="sessionSettings")


class SessionList(_Wire):
    """``GET /api/v0/sessions``."""

    sessions: list[WireSession] = Field(default_factory=list[WireSession])
    pagination: Pagination = Field(default_factory=Pagination)


class WireMessage(_Wire):
    """``Message``: Anthropic-style content blocks with camelCase keys."""

    id: str
    role: str
    content: list[dict[str, Any]] | str = Field(default_factory=list[dict[str, Any]])
    created_at: int = Field(alias="createdAt")
    updated_at: int | None = Field(default=None, alias="updatedAt")
    is_user_visible: bool | None = Field(default=None, alias="isUserVisible")


class MessageList(_Wire):
    """``GET /api/v0/sessions/{id}/messages``."""

    messages: list[WireMessage] = Field(default_factory=list[WireMessage])
    pagination: Pagination = Field(default_factory=Pagination)


class PostedMessage(_Wire):
    """Answer of ``POST /api/v0/sessions/{id}/messages``."""

    message_id: str = Field(alias="messageId")
    status: str | None = None
