"""Backend-neutral models: what every tool, resource and prompt sees.

Backends translate their wire types into these and never let the wire types out.
Field names are part of the public contract (``DESIGN.md``); more fields are welcome,
fewer are not.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator
from pydantic_core import to_jsonable_python


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


_PART_KEYS: dict[str, frozenset[str]] = {
    cls.model_fields["type"].default: frozenset(cls.model_fields)
    for cls in (TextPart, ThinkingPart, ToolCallPart, ToolResultPart, AttachmentPart, RawPart, PlanPart)
}
_TEXT_KEYS = _PART_KEYS["text"]
_part_list: TypeAdapter[list[Part]] | None = None


def _parts_adapter() -> TypeAdapter[list[Part]]:
    global _part_list
    if _part_list is None:
        _part_list = TypeAdapter(list[Part])
    return _part_list


def canonical_parts(parts: list[dict[str, Any]], *, trust: bool = False) -> list[dict[str, Any]]:
    """Parts in their canonical JSON form: validated, every field present, as ``model_dump(mode="json")`` gives.

    Messages are stored in this form, so a page is published from the stored JSON without a
    model per part. With ``trust`` (a read of what this server stored) a part that already has
    exactly its model's fields is taken as it is; anything else (rows written before the form
    was fixed) goes through the models.
    """
    if trust:
        first = parts[0] if len(parts) == 1 else None
        if type(first) is dict and first.keys() == _TEXT_KEYS and type(first["text"]) is str:
            return parts  # nearly every message: one text part
        if all(type(p) is dict and p.keys() == _PART_KEYS.get(str(p.get("type")), ()) for p in parts):
            return parts
    return [p.model_dump(mode="json") for p in _parts_adapter().validate_python(parts)]


def json_parts_text(parts: list[dict[str, Any]]) -> str:
    """:func:`parts_text` of parts in their canonical JSON form."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts_text(_parts_adapter().validate_python(parts))


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


class MessageJSON(TypedDict):
    """A :class:`Message` in its JSON form, as the read path builds it (no model per row)."""

    id: str
    session_id: str
    role: Role
    text: str
    parts: list[dict[str, Any]]
    created_at: str
    truncated: bool
    cursor: str | None
    text_offset: int
    text_length: int | None


@functools.lru_cache(maxsize=512)
def _iso_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_from_ms(ms: int) -> str:
    """Unix milliseconds as pydantic writes the equivalent UTC datetime in JSON (``...T10:48:05.287000Z``)."""
    seconds, frac = divmod(ms, 1000)
    # a turn's messages share their seconds: each second is formatted once
    base = _iso_second(seconds)
    return f"{base}.{frac:03d}000Z" if frac else base + "Z"


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


class StoredMessage:
    """A message as a backend returns it, with its backend-native position.

    The parts are held in whichever form the message came in: models (a remote backend's
    mapping) or their canonical JSON (a row of this server's store, see :func:`canonical_parts`),
    and turned into the other only when asked. A page of fifty stored messages is published
    without building one model per row (bench budget 2).
    """

    __slots__ = ("_created", "_json", "_ms", "_typed", "id", "position", "role")

    def __init__(self, *, id: str, role: Role, parts: Sequence[Part] = (), created_at: datetime, position: str) -> None:
        self.id = id
        self.role: Role = role
        self.position = position
        """Backend-native position just after this message."""
        self._created: datetime | None = created_at
        self._ms: int | None = None
        self._typed: list[Part] | None = list(parts)
        self._json: list[dict[str, Any]] | None = None

    @classmethod
    def stored(cls, id: str, role: Role, parts: list[dict[str, Any]], created_ms: int, position: str) -> StoredMessage:
        """A message from this server's store: ``parts`` in the JSON form it was written in."""
        m = cls.__new__(cls)
        m.id, m.role, m.position, m._ms, m._created, m._typed = id, role, position, created_ms, None, None
        m._json = canonical_parts(parts, trust=True)
        return m

    @property
    def created_at(self) -> datetime:
        """When the message was written (UTC)."""
        if self._created is None:
            self._created = datetime.fromtimestamp((self._ms or 0) / 1000, tz=UTC)
        return self._created

    @property
    def created_iso(self) -> str:
        """:attr:`created_at` as the public JSON writes it."""
        if self._ms is not None:
            return iso_from_ms(self._ms)
        return str(to_jsonable_python(self.created_at))

    @property
    def parts(self) -> list[Part]:
        """The parts as models."""
        if self._typed is None:
            self._typed = _parts_adapter().validate_python(self._json)
        return self._typed

    @property
    def json_parts(self) -> list[dict[str, Any]]:
        """The parts in canonical JSON form (what the public ``Message.parts`` serializes to)."""
        if self._json is None:
            self._json = [p.model_dump(mode="json") for p in self.parts]
        return self._json

    @property
    def text(self) -> str:
        """The readable text of all parts."""
        return parts_text(self._typed) if self._typed is not None else json_parts_text(self.json_parts)

    def __repr__(self) -> str:
        return f"StoredMessage(id={self.id!r}, role={self.role!r}, position={self.position!r}, text={self.text[:40]!r})"


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


@dataclass(slots=True)
class MessagePage:
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
