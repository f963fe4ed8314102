"""ACP ``session/update`` notifications and permission requests -> neutral transcript parts.

ACP wire types stay in this package; :class:`Translator` hands :class:`~..turnio.TurnIO` plain part
dicts (``models.Part`` shapes). Agents differ in the tool-call lifecycle (REAL-AGENTS.md):
Gemini sends no ``tool_call`` before its permission request, Claude sends two for one id, some
never send a final update after a rejection. So a tool call is tracked by id from whichever comes
first (``tool_call``, ``tool_call_update`` or the permission request), updated in place, written
once when it reaches ``completed`` / ``failed``, and any still open are written when the turn ends.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from ..turnio import TurnIO

log = logging.getLogger(__name__)

MAX_TOOL_TEXT = 20_000
"""Characters of one tool result kept in the transcript."""


@dataclass(slots=True)
class _Call:
    id: str
    name: str = "tool"
    title: str | None = None
    status: str | None = None
    input: Any = None
    output: list[str] = field(default_factory=list[str])
    raw_output: Any = None


def _content_text(content: Any) -> list[str]:
    """Readable lines of ACP tool-call content (text blocks, diffs, terminal references)."""
    out: list[str] = []
    items: list[Any] = list(content or [])
    for item in items:
        kind = getattr(item, "type", None)
        if kind == "content":
            block = getattr(item, "content", None)
            text = getattr(block, "text", None)
            if text:
                out.append(str(text))
            elif block is not None:
                out.append(f"[{getattr(block, 'type', 'content')}]")
        elif kind == "diff":
            out.append(f"[edited {getattr(item, 'path', '')}]")
        elif kind == "terminal":
            out.append("[terminal output]")
    return out


class Translator:
    """Feeds one turn's ACP updates, in order, into a :class:`TurnIO`."""

    def __init__(self, io: TurnIO) -> None:
        self.io = io
        self.calls: dict[str, _Call] = {}
        self.lock = anyio.Lock()
        """Updates arrive as concurrent tasks; each handler takes this lock first (FIFO) to keep order."""

    async def update(self, update: Any) -> None:
        """Handle one ``session/update`` (call with :attr:`lock` held)."""
        kind = getattr(update, "session_update", None)
        log.debug("ACP update %s", kind)
        if kind == "agent_message_chunk":
            text = getattr(update.content, "text", None)
            if text:
                await self.io(text)
        elif kind == "agent_thought_chunk":
            text = getattr(update.content, "text", None)
            if text:
                await self.io.thinking(text)
        elif kind in ("tool_call", "tool_call_update"):
            await self.track(update)
        elif kind == "plan":
            entries = [{"text": e.content, "status": str(e.status)} for e in getattr(update, "entries", [])]
            await self.io.plan(entries)

    async def track(self, tc: Any) -> _Call:
        """Start or update the tool call ``tc`` (a ToolCall or ToolCallUpdate); write it when it ends."""
        call = self.calls.get(tc.tool_call_id)
        if call is None:
            call = self.calls[tc.tool_call_id] = _Call(tc.tool_call_id)
        if getattr(tc, "kind", None):
            call.name = str(tc.kind)
        if getattr(tc, "title", None):
            call.title = tc.title
        if getattr(tc, "status", None):
            call.status = str(tc.status)
        if getattr(tc, "raw_input", None) not in (None, {}):
            call.input = tc.raw_input
        lines = _content_text(getattr(tc, "content", None))
        if lines and (call.status in ("completed", "failed") or not call.output):
            call.output = lines
        if getattr(tc, "raw_output", None) is not None:
            call.raw_output = tc.raw_output
        if call.status in ("completed", "failed"):
            await self._write(call)
        return call

    async def _write(self, call: _Call) -> None:
        self.calls.pop(call.id, None)
        text = "\n".join(call.output)
        if not text and call.raw_output is not None:
            raw = call.raw_output
            text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False, default=str)
        text = text[:MAX_TOOL_TEXT]
        part = {"type": "tool_call", "id": call.id, "name": call.name, "title": call.title,
                "status": call.status, "input": call.input}  # fmt: skip
        result = None
        if call.status in ("completed", "failed"):
            result = {"type": "tool_result", "tool_call_id": call.id, "status": call.status, "text": text,
                      "output": text, "is_error": call.status == "failed"}  # fmt: skip
        await self.io.tool(part, result)

    async def finish(self) -> None:
        """Write the tool calls that never reported an end (refused, or the turn was cut short)."""
        async with self.lock:
            for call in list(self.calls.values()):
                await self._write(call)
