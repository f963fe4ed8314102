"""Backend-neutral models: what every tool, resource and prompt sees.

Backends translate their wire types into these and never let the wire types out.
Field names are part of the public contract (``DESIGN.md``); more fields are welcome,
fewer are not.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Status(StrEnum):
    """One status vocabulary for every backend."""

    IDLE = "idle"
    """The last turn finished; the session waits for the next user message."""
    RUNNING = "running"
    """An agent is producing a reply."""
    AWAITING_REPLY = "awaiting_reply"
    """A user message has no reply and no agent is attached: another agent should answer."""
    FAILED = "failed"
    """The last turn failed; ``error`` says why."""
    NEEDS_INPUT = "needs_input"
    """The agent asked for a permission or a question and waits (``pending`` says what)."""


class PendingOption(BaseModel):
    """One answer the agent offers to a pending permission request."""

    id: str
    label: str
    kind: str


class Pending(BaseModel):
    """What the agent of a ``needs_input`` session waits for; answer it with send_message."""

    id: str
    kind: Literal["permission", "question"]
    text: str
    options: list[PendingOption] | None = None
    created_at: datetime


Role = Literal["user", "assistant", "tool", "system"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Part):
    """Plain text."""

    type: Literal["text"] = "text"
    text: str


class ThinkingPart(_Part):
    """Model reasoning, when the backend exposes it."""

    type: Literal["thinking"] = "thinking"
    text: str = ""
    redacted: bool = False


class ToolCallPart(_Part):
    """The agent called a tool."""

    type: Literal["tool_call"] = "tool_call"
    id: str = ""
    name: str
    input: Any = None
    title: str | None = None
    status: str | None = Field(default=None, description="pending, in_progress, completed or failed, when known.")


class ToolResultPart(_Part):
    """The result of a tool call."""

    type: Literal["tool_result"] = "tool_result"
    tool_call_id: str = ""
    output: str = ""
    is_error: bool = False
    duration_ms: int | None = None
    status: str | None = Field(default=None, description="completed or failed, when known.")
    text: str = Field(default="", description="The result as text (the same as output).")

    @model_validator(mode="after")
    def _same_text(self) -> ToolResultPart:
        if self.text and not self.output:
            self.output = self.text
        elif self.output and not self.text:
            self.text = self.output
        return self


class PlanEntry(BaseModel):
    """One step of an agent's plan."""

    text: str
    status: str = Field(default="pending", description="pending, in_progress or completed.")


class PlanPart(_Part):
    """The agent's plan as it stood at this point of the turn."""

    type: Literal["plan"] = "plan"
    entries: list[PlanEntry] = Field(default_factory=list[PlanEntry])


class AttachmentPart(_Part):
    """An image or a file; inline data is kept only when small."""

    type: Literal["attachment"] = "attachment"
    media_type: str = "application/octet-stream"
    name: str | None = None
    url: str | None = None
    data_b64: str | None = None


class RawPart(_Part):
    """A block this server does not understand, kept verbatim so nothing is lost."""

    type: Literal["raw"] = "raw"
    backend_type: str = ""
    data: dict[str, Any] = Field(default_factory=dict[str, Any])


Part = Annotated[
    TextPart | ThinkingPart | ToolCallPart | ToolResultPart | AttachmentPart | RawPart | PlanPart,
    Field(discriminator="type"),
]


def part_text(
    part: TextPart | ThinkingPart | ToolCallPart | ToolResultPart | AttachmentPart | RawPart | PlanPart,
) -> str:
    """The readable text of one part (empty for parts that have none)."""
    match part:
        case TextPart(text=t):
            return t
        case ToolCallPart(name=n, title=t, status=st):
            return f"[tool call: {t or n}{f' ({st})' if st else ''}]"
        case ToolResultPart(output=o, is_error=e):
            return f"[tool error] {o}" if e else o
        case AttachmentPart(name=n, media_type=m):
            return f"[attachment: {n or m}]"
        case PlanPart(entries=es):
            return "[plan]\n" + "\n".join(f"- [{e.status}] {e.text}" for e in es)
        case _:
            return ""


def parts_text(parts: list[Any]) -> str:
    """The readable text of all parts (thinking and raw blocks are not part of it)."""
    if len(parts) == 1 and type(parts[0]) is TextPart:  # nearly every message: one text block
        return parts[0].text
    return "\n".join(t for t in (part_text(p) for p in parts) if t)


class Message(BaseModel):
    """One message of a session's transcript."""

    id: str
    session_id: str
    role: Role
    text: str = Field(description="The readable text of all parts (may be cut, see `truncated`).")
    parts: list[Part] = Field(default_factory=list[Part])
    created_at: datetime
    truncated: bool = Field(default=False, description="True when text was cut at max_chars.")
    cursor: str | None = Field(
        default=None, description="Pass as `after` to list_messages to read what follows this message."
    )
    text_offset: int = Field(default=0, description="Where `text` starts in the full text (after a cut).")
    text_length: int | None = Field(default=None, description="Length of the full text, set when cut.")


class Session(BaseModel):
    """One agent session."""

    id: str = Field(description="Opaque handle '<backend>:<native id>'.")
    backend: str
    title: str | None = None
    status: Status
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    message_count: int = 0
    transcript_uri: str
    messages_uri: str
    model: str | None = None
    agent: str | None = Field(default=None, description="What answers user turns: 'mailbox', an agent name, or remote.")
    pending: Pending | None = None


# --- what backends return (positions are backend-native, wrapped into opaque cursors by the service)


class StoredMessage(BaseModel):
    """A message as a backend returns it, with its backend-native position."""

    id: str
    role: Role
    parts: list[Part] = Field(default_factory=list[Part])
    created_at: datetime
    position: str = Field(description="Backend-native position just after this message.")

    @property
    def text(self) -> str:
        """The readable text of all parts."""
        return parts_text(self.parts)


class SessionRecord(BaseModel):
    """A session as a backend returns it (native id, no URIs)."""

    native_id: str
    title: str | None = None
    status: Status
    error: str | None = None
    created_at: datetime
    updated_at: datetime
    message_count: int = 0
    model: str | None = None
    agent: str | None = None
    pending: Pending | None = None
    head: str | None = Field(default=None, description="Backend position after the last message, if known.")


class MessagePage(BaseModel):
    """A page of messages after a position."""

    items: list[StoredMessage]
    has_more: bool
    status: Status


class SessionPage(BaseModel):
    """A page of sessions."""

    items: list[SessionRecord]
    next_cursor: str | None = None


class Capabilities(BaseModel):
    """What a backend can do; tools answer a clear error for what it cannot."""

    rename: bool = True
    delete: bool = True
    interrupt: bool = True
    assistant_messages: bool = False
    """Whether ``send_message(role="assistant")`` is accepted (the local mailbox)."""
    streaming: bool = False
    system_prompt: bool = False
    model_choice: bool = False


class BackendInfo(BaseModel):
    """A backend as listed in ``sessions://index`` and the server instructions."""

    name: str
    default: bool
    capabilities: Capabilities
    cannot: list[str] = Field(default_factory=list[str])
    agents: list[str] = Field(
        default_factory=list[str], description="Agents to pick with create_session(agent=...), default first (a2a)."
    )
