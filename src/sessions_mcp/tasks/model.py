"""What a task is, and how each protocol era writes it on the wire.

One stored task serves both eras: the 2026-07-28 tasks extension (SEP-2663, flat ``Task`` with
``ttlMs``/``pollIntervalMs`` and the result inlined) and the experimental tasks of 2025-11-25
(SEP-1686, ``{task: {...}}`` with ``ttl``/``pollInterval``, the result through ``tasks/result``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, cast

from ..models import Pending
from ..store.tasks import TERMINAL, StoredStatus, TaskRow

__all__ = ["TERMINAL", "StoredStatus", "TaskRow"]

EXTENSION_ID = "io.modelcontextprotocol/tasks"
SESSION_META_KEY = "io.github.sessions-mcp/session_id"
RELATED_TASK_META_KEY = "io.modelcontextprotocol/related-task"

TTL_MS = 24 * 3600 * 1000
"""How long a finished task is kept (and the smallest ``ttlMs`` a task reports)."""
MIN_TTL_MS = 1000
"""The shortest ``ttl`` a 2025-11-25 client may ask for."""
POLL_INTERVAL_MS = 1500
"""Suggested polling interval: within the 1000-2000 ms the contract promises."""
TASK_TOOLS = ("create_session", "send_message")
"""The tools whose waiting calls may become tasks."""

WireStatus = Literal["working", "input_required", "completed", "failed", "cancelled"]
Era = Literal["2026", "2025"]


class TaskGone(LookupError):
    """The task vanished (expired and pruned, or its session deleted) while it was being read."""


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (for reading untrusted params)."""
    return cast(dict[str, Any], value) if isinstance(value, dict) else {}


def new_task_id() -> str:
    """An unguessable task id (192 random bits)."""
    return "task_" + secrets.token_urlsafe(24)


def iso(ms: int) -> str:
    """Unix milliseconds as an ISO 8601 UTC timestamp."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TaskView:
    """A task as a client sees it right now (``input_required`` and its requests included)."""

    row: TaskRow
    status: WireStatus
    status_message: str | None
    last_updated_ms: int
    input_requests: dict[str, Any] = field(default_factory=dict[str, Any])
    pending: Pending | None = None
    """The session's pending request behind ``input_requests`` (``needs_input``)."""

    def with_row(self, row: TaskRow) -> TaskView:
        """The same view over a newer row."""
        return replace(self, row=row)

    def _common(self) -> dict[str, Any]:
        out: dict[str, Any] = {"taskId": self.row.id, "status": self.status}
        if self.status_message:
            out["statusMessage"] = self.status_message
        out["createdAt"] = iso(self.row.created_at)
        out["lastUpdatedAt"] = iso(self.last_updated_ms)
        return out

    def meta(self) -> dict[str, Any]:
        """``_meta`` carried by every task answer: the session the task belongs to."""
        return {SESSION_META_KEY: self.row.session_id}

    def modern(self, *, result_type: str = "complete", detailed: bool = True) -> dict[str, Any]:
        """The 2026-07-28 ``Task`` (``DetailedTask`` with ``detailed``)."""
        out = {
            "resultType": result_type,
            **self._common(),
            "ttlMs": self.row.ttl_ms,
            "pollIntervalMs": POLL_INTERVAL_MS,
        }
        if detailed:
            if self.status == "input_required":
                out["inputRequests"] = self.input_requests
            elif self.status == "completed" and self.row.result is not None:
                out["result"] = _json(self.row.result)
            elif self.status == "failed" and self.row.error is not None:
                out["error"] = _json(self.row.error)
        out["_meta"] = self.meta()
        return out

    def legacy(self) -> dict[str, Any]:
        """The 2025-11-25 ``Task``."""
        return {**self._common(), "ttl": self.row.ttl_ms, "pollInterval": POLL_INTERVAL_MS}


def _json(text: str) -> Any:
    import json

    return json.loads(text)
