"""Tasks over session turns: create, observe, answer, cancel. Protocol-neutral.

A task is a stored ``create_session``/``send_message`` call that would have waited for the agent.
Its state is derived from the session it follows, so any process on the same store answers for
it, a restart loses nothing, and a task, a waiting call, ``list_messages(wait_s)`` and a
subscription all see the same turn:

- session ``running``/``awaiting_reply`` -> ``working``; ``needs_input`` -> ``input_required``;
- ``idle``/``failed`` -> ``completed`` with exactly the result the waiting call would have
  returned (a failed turn is a *completed* call whose result says ``failed``), recorded once
  (compare-and-set) by whichever process sees it first;
- ``tasks/cancel`` and ``interrupt_session`` record ``cancelled`` before interrupting the turn.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anyio.abc import TaskGroup
from mcp.types import CallToolResult, TextContent

from ..errors import SessionsError, UnknownSession
from ..models import Pending, Status
from ..store.base import Store, now_ms
from .model import POLL_INTERVAL_MS, TTL_MS, Era, StoredStatus, TaskGone, TaskRow, TaskView, as_dict, new_task_id

if TYPE_CHECKING:
    from ..service import SessionService

log = logging.getLogger(__name__)

ENDED = (Status.IDLE, Status.FAILED)
FOLLOW_WAKE_S = 30.0
"""A followed task is re-read at least this often even when its session reports no change."""

Listener = Callable[[TaskView], Awaitable[None]]


def _dump(result: CallToolResult) -> str:
    return json.dumps(result.model_dump(by_alias=True, mode="json", exclude_none=True))


def _render(tool: str, composed: Any) -> CallToolResult:
    from ..tools import create_session_result, send_message_result

    return create_session_result(composed) if tool == "create_session" else send_message_result(composed)


def _result_model(tool: str) -> Any:
    from ..results import CreateSessionResult, SendMessageResult

    return CreateSessionResult if tool == "create_session" else SendMessageResult


def input_requests(pending: Pending) -> dict[str, Any]:
    """The ``inputRequests`` of a session's pending request: one form elicitation, one field."""
    options = pending.options or []
    if pending.kind == "permission" and options:
        # a titled single-select enum of the option ids (the same form the elicitation of a waiting call uses)
        answer: dict[str, Any] = {
            "type": "string",
            "title": "Your answer",
            "oneOf": [{"const": o.id, "title": o.label} for o in options],
        }
    else:
        answer = {"type": "string", "title": "Your answer"}
    return {
        str(pending.id): {
            "method": "elicitation/create",
            "params": {
                "mode": "form",
                "message": str(pending.text),
                "requestedSchema": {"type": "object", "properties": {"answer": answer}, "required": ["answer"]},
            },
        }
    }


@dataclass
class _Sub:
    owner: str
    task_ids: frozenset[str]
    listener: Listener


@dataclass
class TaskManager:
    """The tasks of every principal, in the store every server process on the database shares."""

    service: SessionService
    store: Store
    _subs: dict[object, _Sub] = field(default_factory=dict[object, _Sub])
    _following: set[str] = field(default_factory=set[str])
    _tg: TaskGroup | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        """Follow tasks in ``tg`` while the server runs (expired tasks are pruned as new ones are stored)."""
        self._tg = tg

    # --- creating -------------------------------------------------------------------------

    async def create(
        self, principal: str, tool: str, era: Era, first: Any, max_chars: int, *, ttl_ms: int | None = None
    ) -> TaskView:
        """Store a task for a call whose user message is stored and whose turn has begun."""
        now = now_ms()
        sid = first.session.id
        row = TaskRow(
            id=new_task_id(), owner=principal, tool=tool, session_id=sid, era=era, status="working",
            status_message=f"the agent is working in session {sid}", first=first.model_dump_json(),
            max_chars=max_chars, result=None, error=None, created_at=now, updated_at=now,
            ttl_ms=ttl_ms or TTL_MS,
        )  # fmt: skip
        await self.store.task_create(row)
        return TaskView(row, "working", row.status_message, now)

    async def create_finished(
        self, principal: str, tool: str, era: Era, result: CallToolResult, *, ttl_ms: int | None
    ) -> TaskView:
        """A task born completed: a 2025-11-25 task call that had nothing to wait for."""
        now = now_ms()
        structured: dict[str, Any] = result.structured_content or {}
        sid = str(as_dict(structured.get("session")).get("id", ""))
        row = TaskRow(
            id=new_task_id(), owner=principal, tool=tool, session_id=sid, era=era, status="completed",
            status_message="the call ended without waiting for an agent", first="{}", max_chars=0,
            result=_dump(result), error=None, created_at=now, updated_at=now, ttl_ms=ttl_ms or TTL_MS,
        )  # fmt: skip
        await self.store.task_create(row)
        return self._terminal(row)

    # --- reading --------------------------------------------------------------------------

    async def get(self, owner: str, task_id: str) -> TaskView | None:
        """The task as it stands now (recording its end when the turn has ended), or None."""
        row = await self.store.task_get(owner, task_id)
        return None if row is None else await self.observe(row)

    def _terminal(self, row: TaskRow) -> TaskView:
        return TaskView(row, row.status, row.status_message, row.updated_at)

    async def observe(self, row: TaskRow) -> TaskView:
        """Derive a working task's state from its session; record the end once it came."""
        if row.terminal:
            return self._terminal(row)
        first = _result_model(row.tool).model_validate_json(row.first)
        try:
            status, composed = await self.service.turn_state(row.owner, first, row.max_chars)
        except UnknownSession as exc:
            # the waiting call would have ended with this tool error: the call completed with it
            result = CallToolResult(content=[TextContent(type="text", text=str(exc))], is_error=True)
            return await self._finish(row, "completed", f"session {row.session_id} is gone", result=_dump(result))
        except SessionsError as exc:
            log.info("task %s: could not read session %s: %s", row.id, row.session_id, exc)
            return TaskView(row, "working", f"the agent is working in session {row.session_id} ({exc})", row.updated_at)
        session = composed.session
        updated = max(row.updated_at, int(session.updated_at.timestamp() * 1000))
        if status in ENDED:
            outcome = "the turn failed" if status is Status.FAILED else "the agent answered"
            message = f"{outcome}; session {row.session_id} is {status.value}"
            return await self._finish(row, "completed", message, result=_dump(_render(row.tool, composed)))
        pending = session.pending
        if status is Status.NEEDS_INPUT and pending is not None:
            text = f"the agent in session {row.session_id} asks: {pending.text}"
            return TaskView(row, "input_required", text, updated, input_requests(pending), pending)
        return TaskView(row, "working", f"the agent is working in session {row.session_id}", updated)

    async def _finish(
        self, row: TaskRow, status: StoredStatus, message: str, *, result: str | None = None, error: str | None = None
    ) -> TaskView:
        done = await self.store.task_finish(
            row.id, status=status, status_message=message, result=result, error=error, keep_ms=row.ttl_ms
        )
        if done is None:  # another process (or call) recorded the end first: theirs stands
            again = await self.store.task_get(row.owner, row.id)
            if again is None or not again.terminal:
                raise TaskGone(row.id)
            done = again
        view = self._terminal(done)
        await self.publish(view)
        return view

    async def list(self, owner: str, *, after: tuple[int, str] | None, limit: int) -> list[TaskView]:
        """The owner's tasks, newest first (states derived as for :meth:`get`)."""
        return [await self.observe(r) for r in await self.store.task_list(owner, after=after, limit=limit)]

    async def wait(self, owner: str, task_id: str, *, on_input: Listener | None = None) -> TaskView | None:
        """Block until the task has ended (however long the turn takes); None when unknown.

        ``on_input`` is called once per request the agent asks while the task waits for input
        (the 2025-11-25 ``tasks/result`` relays it to the client as an elicitation).
        """
        row = await self.store.task_get(owner, task_id)
        if row is None or row.terminal:
            return None if row is None else self._terminal(row)
        h, be = self.service.handle(row.session_id)
        asked: set[str] = set()
        async with be.watch(owner, h.native_id) as watch:  # entered first: no change is missed
            while True:
                view = await self.get(owner, task_id)
                if view is None or view.row.terminal:
                    return view
                new = set(view.input_requests) - asked
                if on_input is not None and new:
                    asked |= new
                    await on_input(view)
                    continue
                await watch.next(FOLLOW_WAKE_S)

    # --- changing -------------------------------------------------------------------------

    async def cancel(self, owner: str, task_id: str) -> TaskView | None:
        """Record ``cancelled`` and interrupt the turn. Returns the task (unchanged when it had ended)."""
        view = await self.get(owner, task_id)
        if view is None or view.row.terminal:
            return view
        view = await self._finish(view.row, "cancelled", "cancelled by tasks/cancel; the turn was interrupted")
        try:
            await self.service.interrupt_session(owner, view.row.session_id)
        except SessionsError as exc:
            log.info("task %s cancelled, but its turn could not be interrupted: %s", task_id, exc)
        return view

    async def before_interrupt(self, owner: str, session_id: str) -> None:
        """``interrupt_session`` is about to end this session's turn: its tasks end ``cancelled``."""
        for row in await self.store.task_working(owner, session_id):
            view = await self.observe(row)  # a turn that already ended keeps its result
            if not view.row.terminal:
                await self._finish(view.row, "cancelled", "the turn was interrupted (interrupt_session)")

    async def answer(self, owner: str, task_id: str, responses: dict[str, Any]) -> bool:
        """Answer the pending request of an ``input_required`` task like ``send_message`` would.

        Responses to keys that are not outstanding are ignored. False when the task is unknown.
        """
        view = await self.get(owner, task_id)
        if view is None:
            return False
        for key, response in responses.items():
            if key not in view.input_requests:
                continue
            text = _answer_text(view.pending, as_dict(response))
            if text is not None:
                await self.service.send_message(
                    owner, session_id=view.row.session_id, text=text, role="user", wait=False, timeout_s=0,
                    idempotency_key=None,
                )  # fmt: skip
        return True

    # --- following and notifications ------------------------------------------------------

    def subscribe(self, owner: str, task_ids: frozenset[str], listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every status change of these tasks of ``owner``."""
        token = object()
        self._subs[token] = _Sub(owner, task_ids, listener)

        def unsubscribe() -> None:
            self._subs.pop(token, None)

        return unsubscribe

    async def publish(self, view: TaskView) -> None:
        """Tell this process's subscribers about a task's new state."""
        for sub in list(self._subs.values()):
            if sub.owner == view.row.owner and view.row.id in sub.task_ids:
                try:
                    await sub.listener(view)
                except Exception:
                    log.debug("a task listener failed", exc_info=True)

    def _watched(self, task_id: str) -> bool:
        return any(task_id in sub.task_ids for sub in self._subs.values())

    def follow(self, row: TaskRow) -> None:
        """Watch a working task's session in the background and publish each status change,
        while anybody subscribes to it (nobody polls a session for a task nobody listens to)."""
        if self._tg is None or row.terminal or row.id in self._following:
            return
        self._following.add(row.id)
        self._tg.start_soon(self._follow, row)

    async def _follow(self, row: TaskRow) -> None:
        try:
            h, be = self.service.handle(row.session_id)
            last: tuple[str, tuple[str, ...]] | None = None
            async with be.watch(row.owner, h.native_id) as watch:
                while True:
                    current = await self.store.task_get(row.owner, row.id)
                    if current is None:
                        return
                    view = await self.observe(current)
                    state = (view.status, tuple(view.input_requests))
                    if state != last and not view.row.terminal:
                        await self.publish(view)  # terminal states are published when recorded
                    last = state
                    if view.row.terminal or not self._watched(row.id):
                        return
                    await watch.next(FOLLOW_WAKE_S)
        except Exception:
            log.warning("stopped following task %s", row.id, exc_info=True)
        finally:
            self._following.discard(row.id)


def _answer_text(pending: Pending | None, response: dict[str, Any]) -> str | None:
    """The ``send_message`` text for one elicitation response (None: nothing to send)."""
    if response.get("action") == "accept":
        content = as_dict(response.get("content"))
        value = content.get("answer")
        if value is None and len(content) == 1:
            value = next(iter(content.values()))
        return None if value is None else str(value)
    # decline or cancel: a permission is rejected; an open question stays open
    options = pending.options if pending is not None and pending.options else []
    rejects = [o.id for o in options if o.kind.startswith("reject")]
    return rejects[0] if rejects else None


__all__ = ["POLL_INTERVAL_MS", "TaskManager", "input_requests"]
