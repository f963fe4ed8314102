"""Fabro turns to neutral messages.

Fabro turns have no ids and are append-only, so a turn's index is stable: message ids are
synthetic (``<fabro id>:<turn index>``) and positions count neutral messages. A tool turn becomes
two messages, the assistant's tool calls (``…:call``) and their results (``…:result``), so the
neutral message list is a pure function of the turns and positions never move.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ...errors import BadCursor
from ...ids import count_position
from ...models import Part, RawPart, StoredMessage, TextPart, ToolCallPart, ToolResultPart
from .wire import AssistantTurn, ToolTurn, Turn, UnknownTurn, UserTurn


def _tool_input(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw  # Fabro documents a JSON string, but keep whatever came


def turns_to_messages(fabro_id: str, turns: Sequence[Turn], fallback_time: datetime) -> list[StoredMessage]:
    """Every turn as neutral messages, oldest first, with stable ids and positions."""
    out: list[StoredMessage] = []
    last_time = fallback_time

    def add(mid: str, role: Any, parts: list[Part], at: datetime) -> None:
        out.append(StoredMessage(id=mid, role=role, parts=parts, created_at=at, position=str(len(out) + 1)))

    for i, turn in enumerate(turns):
        base = f"{fabro_id}:{i}"
        match turn:
            case UserTurn(content=c, created_at=at):
                add(base, "user", [TextPart(text=c)], at)
                last_time = at
            case AssistantTurn(content=c, created_at=at):
                add(base, "assistant", [TextPart(text=c)], at)
                last_time = at
            case ToolTurn(tools=tools, created_at=at):
                calls: list[Part] = [ToolCallPart(id=t.id, name=t.tool_name, input=_tool_input(t.input)) for t in tools]
                results: list[Part] = [
                    ToolResultPart(tool_call_id=t.id, output=t.result, is_error=t.is_error, duration_ms=t.duration_ms)
                    for t in tools
                ]
                add(f"{base}:call", "assistant", calls, at)
                add(f"{base}:result", "tool", results, at)
                last_time = at
            case UnknownTurn():
                at = turn.created_at or last_time
                data = turn.model_dump(mode="json", exclude={"kind", "created_at"})
                add(base, "assistant", [RawPart(backend_type=f"fabro.{turn.kind}", data=data)], at)
                last_time = at
    return out


def parse_position(after: str | None) -> int:
    """A position (a count of neutral messages) from a cursor; raises :class:`BadCursor`."""
    n = count_position(after)
    if n is None:
        raise BadCursor("not a Fabro position")
    return n
