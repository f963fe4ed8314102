"""A2A wire objects (protobuf, from ``a2a-sdk``) to neutral values. Nothing else here sees them.

Status mapping (DESIGN.md): ``submitted``/``working`` -> ``running``; ``input-required`` ->
``needs_input`` (a question); ``auth-required`` -> ``failed`` with the reason; ``completed`` ->
``idle``; ``failed``/``rejected`` -> ``failed``; ``canceled`` -> ``idle``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from a2a.types import Artifact, Part, StreamResponse, Task, TaskState
from a2a.types import Message as WireMessage
from google.protobuf.json_format import MessageToJson

from ...models import AttachmentPart, RawPart, Status, TextPart, parts_text

INLINE_BYTES = 64 * 1024
"""Inline file bytes kept in the transcript up to this size (larger ones are named, not kept)."""

TERMINAL = frozenset({"completed", "failed", "rejected", "canceled"})
"""States after which a task never changes again."""
PAUSED = frozenset({"input-required", "auth-required"})
"""States in which a task waits for the client."""

STATUS: dict[str, Status] = {
    "submitted": Status.RUNNING,
    "working": Status.RUNNING,
    "input-required": Status.NEEDS_INPUT,
    "auth-required": Status.FAILED,
    "completed": Status.IDLE,
    "failed": Status.FAILED,
    "rejected": Status.FAILED,
    "canceled": Status.IDLE,
}


def state_name(state: int) -> str:
    """``TASK_STATE_INPUT_REQUIRED`` -> ``input-required`` (the A2A spelling of the states)."""
    try:
        name = TaskState.Name(state)  # pyright: ignore[reportArgumentType]
    except ValueError:
        return "unknown"
    return name.removeprefix("TASK_STATE_").lower().replace("_", "-")


def neutral_parts(parts: Any) -> list[dict[str, Any]]:
    """A2A parts as neutral part dicts (text, attachment; structured data as JSON text)."""
    out: list[dict[str, Any]] = []
    for p in parts:
        out.append(_part(p).model_dump(exclude_none=True))
    return out


def _part(p: Part) -> TextPart | AttachmentPart | RawPart:
    kind = p.WhichOneof("content")
    media = p.media_type or None
    name = p.filename or None
    if kind == "text":
        return TextPart(text=p.text)
    if kind == "url":
        return AttachmentPart(media_type=media or "application/octet-stream", name=name, url=p.url)
    if kind == "raw":
        data = base64.b64encode(p.raw).decode() if len(p.raw) <= INLINE_BYTES else None
        return AttachmentPart(media_type=media or "application/octet-stream", name=name, data_b64=data)
    if kind == "data":
        return TextPart(text=MessageToJson(p.data, indent=None))
    return RawPart(backend_type="a2a.part", data={"kind": str(kind)})


def text_of(parts: list[dict[str, Any]]) -> str:
    """The readable text of neutral part dicts."""
    models: list[Any] = []
    for p in parts:
        if p.get("type") == "text":
            models.append(TextPart(text=p.get("text", "")))
        elif p.get("type") == "attachment":
            models.append(AttachmentPart.model_validate(p))
    return parts_text(models)


def artifact_parts(artifacts: Any) -> list[dict[str, Any]]:
    """The parts of every artifact, in order; adjacent text parts of one artifact (streamed chunks
    appended to it) are joined into one."""
    out: list[dict[str, Any]] = []
    for a in artifacts:
        mine: list[dict[str, Any]] = []
        for p in neutral_parts(a.parts):
            if mine and p.get("type") == "text" and mine[-1].get("type") == "text":
                mine[-1] = {**mine[-1], "text": mine[-1]["text"] + p["text"]}
            else:
                mine.append(p)
        out.extend(mine)
    return out


@dataclass(slots=True)
class TaskView:
    """What this server needs of an A2A task."""

    id: str
    context_id: str
    state: str
    status_parts: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    artifacts: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    status_id: str = ""
    """The messageId of the status message (tells a new question from one already answered)."""

    @property
    def status_text(self) -> str:
        """The readable text of the status message."""
        return text_of(self.status_parts)

    @property
    def status(self) -> Status:
        """The session status this task state means."""
        return STATUS.get(self.state, Status.RUNNING)


def task_view(task: Task) -> TaskView:
    """A task read with GetTask (or the ``task`` of a stream event)."""
    msg = task.status.message if task.status.HasField("message") else None
    return TaskView(
        id=task.id,
        context_id=task.context_id,
        state=state_name(task.status.state),
        status_parts=neutral_parts(msg.parts) if msg is not None else [],
        artifacts=artifact_parts(task.artifacts),
        status_id=msg.message_id if msg is not None else "",
    )


@dataclass(slots=True)
class Event:
    """One event of a stream (or the single answer of a non-streaming SendMessage)."""

    kind: str
    """``task``, ``status``, ``artifact`` or ``message``."""
    task_id: str = ""
    context_id: str = ""
    state: str = ""
    parts: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    task: TaskView | None = None
    artifact_id: str = ""
    append: bool = False
    status_id: str = ""


def event_view(ev: StreamResponse) -> Event:
    """A stream event; raises ``ValueError`` for one that carries nothing this server knows."""
    kind = ev.WhichOneof("payload")
    if kind == "task":
        t = task_view(ev.task)
        return Event("task", t.id, t.context_id, t.state, t.status_parts, task=t, status_id=t.status_id)
    if kind == "status_update":
        u = ev.status_update
        msg = u.status.message if u.status.HasField("message") else None
        parts = neutral_parts(msg.parts) if msg is not None else []
        sid = msg.message_id if msg is not None else ""
        return Event("status", u.task_id, u.context_id, state_name(u.status.state), parts, status_id=sid)
    if kind == "artifact_update":
        a = ev.artifact_update
        return Event(
            "artifact", a.task_id, a.context_id, parts=_artifact(a.artifact), artifact_id=a.artifact.artifact_id,
            append=a.append,
        )  # fmt: skip
    if kind == "message":
        m: WireMessage = ev.message
        return Event("message", m.task_id, m.context_id, parts=neutral_parts(m.parts))
    raise ValueError(f"a stream event with no task, statusUpdate, artifactUpdate or message ({kind!r})")


def _artifact(a: Artifact) -> list[dict[str, Any]]:
    return neutral_parts(a.parts)
