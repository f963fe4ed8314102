"""What an agent writes to during a turn: :class:`TurnIO`.

Calling it with text is the first-stage ``emit`` (command and openai agents use only that). ACP
agents also report thinking, tool calls, plans and permission requests. The transcript is written
*while the turn runs*, so ``list_messages(wait_s=...)`` and subscribers see progress:

- text and thinking collect in the current assistant *segment*;
- a finished tool call first writes the segment so far (role ``assistant``), then one ``tool``
  message with its ``tool_call`` and ``tool_result`` parts;
- the runner writes the last segment when the turn ends (with the session's new status).

:meth:`TurnIO.ask` surfaces a permission request or a question: first to a waiting client that
can elicit, else as status ``needs_input`` with ``pending`` until ``send_message`` answers it (from
any process sharing the store) or ``SESSIONS_MCP_LOCAL__INPUT_TIMEOUT_S`` passes.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from ....models import Pending, PendingOption, Status

if TYPE_CHECKING:
    from ..backend import LocalBackend

log = logging.getLogger(__name__)

ANSWER = "answer"
"""``backend_type`` of the raw part that marks a user message as the answer to a pending request."""

Asker = Callable[[Pending], Awaitable[str | None]]
"""Asks the person through a waiting client (elicitation); returns an option id / answer, or None."""


def answer_of(parts: list[dict[str, Any]]) -> tuple[str, str] | None:
    """``(pending id, answer)`` when these stored parts are an answer to a pending request."""
    for p in parts:
        if p.get("type") == "raw" and p.get("backend_type") == ANSWER:
            data: dict[str, Any] = p.get("data") or {}
            return str(data.get("pending", "")), str(data.get("answer", ""))
    return None


def answer_parts(text: str, pending_id: str, answer: str) -> list[dict[str, Any]]:
    """The stored parts of a user message that answers ``pending_id`` with ``answer``."""
    return [
        {"type": "text", "text": text},
        {"type": "raw", "backend_type": ANSWER, "data": {"pending": pending_id, "answer": answer}},
    ]


def match_option(pending: Pending, text: str) -> str | None:
    """The option id ``text`` names (an id or a label, case-insensitive), or None."""
    want = text.strip().casefold()
    for o in pending.options or []:
        if want in (o.id.casefold(), o.label.strip().casefold()):
            return o.id
    return None


class TurnIO:
    """The sink of one agent turn (see the module docstring)."""

    def __init__(
        self,
        backend: LocalBackend,
        owner: str,
        session_id: str,
        *,
        limit: int,
        workdir: str | None = None,
        state: dict[str, Any] | None = None,
        input_timeout_s: float = 1800.0,
    ) -> None:
        self.backend = backend
        self.owner = owner
        self.session_id = session_id
        self.limit = limit
        self.workdir = workdir
        self.state: dict[str, Any] = dict(state or {})
        self.input_timeout_s = input_timeout_s
        self.segment: list[dict[str, Any]] = []
        self.size = 0
        self.cut = False
        self.written = 0
        """Messages this turn wrote so far (tool steps and earlier segments)."""
        self._lock = anyio.Lock()

    # --- text (the first-stage emit) -----------------------------------------------------------

    async def __call__(self, text: str) -> None:
        kept = self._keep(text)
        if not kept:
            return
        if self.segment and self.segment[-1]["type"] == "text":
            self.segment[-1]["text"] += kept
        else:
            self.segment.append({"type": "text", "text": kept})
        await self.backend.stream_delta(self.session_id, kept)

    def _keep(self, text: str) -> str:
        room = self.limit - self.size
        if room <= 0:
            self.cut = self.cut or bool(text)
            return ""
        kept = text[:room]
        self.cut = self.cut or len(kept) < len(text)
        self.size += len(kept)
        return kept

    async def thinking(self, text: str) -> None:
        """Model reasoning (kept in the segment; not part of the readable text)."""
        kept = self._keep(text)
        if not kept:
            return
        if self.segment and self.segment[-1]["type"] == "thinking":
            self.segment[-1]["text"] += kept
        else:
            self.segment.append({"type": "thinking", "text": kept})

    async def plan(self, entries: list[dict[str, str]]) -> None:
        """The agent's current plan (replaces an earlier plan of the same segment)."""
        self.segment = [p for p in self.segment if p["type"] != "plan"]
        self.segment.append({"type": "plan", "entries": entries})

    # --- whole messages written during the turn ----------------------------------------------

    def segment_text(self) -> str:
        """The readable text of the current segment."""
        return "".join(p["text"] for p in self.segment if p["type"] == "text")

    async def flush(self) -> None:
        """Write the segment so far as an assistant message (the session stays ``running``)."""
        async with self._lock:
            if not self.segment:
                return
            parts, self.segment = self.segment, []
            await self._write("assistant", parts)

    async def tool(self, call: dict[str, Any], result: dict[str, Any] | None) -> None:
        """A tool call that finished (or was refused): write it as one ``tool`` message."""
        await self.flush()
        parts = [call] + ([result] if result is not None else [])
        async with self._lock:
            await self._write("tool", parts)

    async def note(self, text: str) -> None:
        """A line for the record (an answered permission request, say), as a ``tool`` message."""
        await self.flush()
        async with self._lock:
            await self._write("tool", [{"type": "text", "text": text}])

    async def _write(self, role: str, parts: list[dict[str, Any]]) -> None:
        from ....models import canonical_parts, json_parts_text

        text = json_parts_text(canonical_parts(parts))
        await self.backend.append_agent_message(
            self.owner,
            self.session_id,
            parts=parts,
            text=text,
            status=None,
            role=role,  # pyright: ignore[reportArgumentType]
        )
        self.written += 1

    async def save_state(self, **values: Any) -> None:
        """Remember the agent's own ids for the next turn, also after a restart."""
        self.state.update(values)
        await self.backend.store.agent_session_put(self.session_id, state=self.state)

    # --- needs_input -------------------------------------------------------------------------

    async def ask(self, kind: str, text: str, options: list[PendingOption] | None) -> str | None:
        """Ask the person; the chosen option id (or the answer), None when nobody answered in time."""
        pending = Pending(
            id=secrets.token_urlsafe(9), kind="question" if kind == "question" else "permission",
            text=text, options=options, created_at=datetime.now(UTC),
        )  # fmt: skip
        await self.flush()
        answer = None
        with anyio.move_on_after(self.input_timeout_s):
            answer = await self.backend.elicit(self.session_id, pending)
        if answer is not None and pending.options:
            answer = match_option(pending, answer)
        if answer is not None:
            return answer
        store = self.backend.store
        page = await store.list_messages(self.owner, self.session_id, after_seq=0, limit=1)
        if page is None:
            return None
        after = page[0].last_seq
        await store.agent_session_put(self.session_id, pending=pending.model_dump(mode="json"))
        await self.backend.set_status(self.owner, self.session_id, Status.NEEDS_INPUT)
        answered: str | None = None
        try:
            with anyio.move_on_after(self.input_timeout_s):
                answered = await self._wait_answer(pending.id, after)
        finally:
            with anyio.CancelScope(shield=True):
                row = await store.get_session(self.owner, self.session_id)
                if row is not None:  # else deleted meanwhile: nothing left to clear
                    await store.agent_session_put(self.session_id, clear_pending=True)
                    if row.status is Status.NEEDS_INPUT:
                        await self.backend.set_status(self.owner, self.session_id, Status.RUNNING)
        return answered

    async def _wait_answer(self, pending_id: str, after: int) -> str | None:
        feed = self.backend.feed
        async with feed.interested():
            while True:
                ticket = feed.ticket(self.session_id)
                page = await self.backend.store.list_messages(
                    self.owner, self.session_id, after_seq=after, limit=200, roles=["user"]
                )
                if page is None:
                    return None  # the session was deleted
                for m in page[1]:
                    after = max(after, m.seq)
                    got = answer_of(m.parts)
                    if got is not None and got[0] == pending_id:
                        return got[1]
                await ticket.wait(5.0)
