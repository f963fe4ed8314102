"""What the session tools return (the models their ``outputSchema`` is generated from)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from .models import Message, MessageJSON, Pending, Session, Status


class WriteResult(BaseModel):
    """What the write tools have in common: the session after the write, the messages, where to read on."""

    session: Session
    messages: list[Message] = Field(description="The message the call wrote, then replies that arrived.")
    cursor: str = Field(description="Pass as `after` to list_messages to read what comes next.")
    status: Status
    replayed: bool = Field(default=False, description="True when an idempotency_key returned an earlier result.")
    pending: Pending | None = None


class CreateSessionResult(WriteResult):
    """What ``create_session`` returns."""


class SendMessageResult(WriteResult):
    """What ``send_message`` returns."""

    message_id: str


class ListMessagesResult(BaseModel):
    """A page of messages."""

    messages: list[Message]
    next_cursor: str = Field(description="Pass as `after` next time; stays put on an empty page.")
    has_more: bool
    status: Status


@dataclass(slots=True)
class MessagesPage:
    """A page of messages as the read path builds it; :class:`ListMessagesResult` is its schema."""

    messages: list[MessageJSON]
    next_cursor: str
    has_more: bool
    status: Status

    def json(self) -> dict[str, Any]:
        """The page as JSON: what ``ListMessagesResult.model_dump(mode="json")`` gives for it."""
        return {
            "messages": self.messages,
            "next_cursor": self.next_cursor,
            "has_more": self.has_more,
            "status": self.status.value,
        }


class ListSessionsResult(BaseModel):
    """A page of sessions."""

    sessions: list[Session]
    next_cursor: str | None = None


class DeleteResult(BaseModel):
    """What ``delete_session`` returns."""

    deleted: Literal[True] = True
    session_id: str
