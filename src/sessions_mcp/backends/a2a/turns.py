"""Following remote tasks: one :class:`Turn` per user message, until its task ends or pauses.

A turn starts with ``SendMessage`` (streamed when the card streams). Its first event names the
task and context; the user message is stored then, carrying those ids (a ``raw`` part of type
``a2a.ids``), so the store alone says which remote task a session waits on, also after a
restart or in another process. The rest of the turn is followed in the background:

- streaming agents: the open stream; when it is cut, ``SubscribeToTask`` again (a
  ``GetTask`` in between tells a task that ended meanwhile);
- other agents: ``GetTask`` with backoff (0.2 s, x1.5, up to ``SESSIONS_MCP_A2A__POLL_MAX_S``).

``working`` status texts and streamed artifact text are progress for waiters, not transcript
messages. When the task completes (or pauses for input, fails, or is cancelled) it is re-read
with ``GetTask`` and its final status message and artifacts become one assistant message,
written with a per-turn dedupe key so two processes following the same task write it once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ...errors import AuthError, BackendError, ProtocolError, SessionsError, Unavailable
from ...models import Status, StoredMessage, TextPart
from ...store.base import Store
from ..stored import stored_message
from .mapping import PAUSED, TERMINAL, Event, TaskView, text_of
from .remote import AgentLink, new_message_id

log = logging.getLogger(__name__)

IDS = "a2a.ids"
"""``backend_type`` of the raw part that carries a message's A2A ids."""
FIRST_POLL_S = 0.2
MAX_FAILURES = 5
"""Consecutive failed reads of a running task before the session is failed."""
TASK_TIMEOUT = "SESSIONS_MCP_A2A__TASK_TIMEOUT_S"


def ids_part(**ids: str) -> dict[str, Any]:
    """The raw part that records A2A ids with a stored message."""
    return {"type": "raw", "backend_type": IDS, "data": {k: v for k, v in ids.items() if v}}


def ids_of(parts: list[dict[str, Any]]) -> dict[str, str]:
    """The A2A ids recorded with a stored message ({} when none)."""
    for p in parts:
        if p.get("type") == "raw" and p.get("backend_type") == IDS:
            data = p.get("data")
            if isinstance(data, dict):
                return {str(k): str(v) for k, v in data.items()}  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    return {}


@dataclass(eq=False)
class Turn:
    """One user message being answered by a remote task."""

    owner: str
    session_id: str
    link: AgentLink
    message_id: str
    context_id: str = ""
    task_id: str = ""
    state: str = "submitted"
    deltas: list[str] = field(default_factory=list[str])
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: bool = False
    interrupted: bool = False
    answered: str = ""
    """The status messageId of the question this turn answers: seeing it again is not a new question."""

    def paused(self, state: str, status_id: str) -> bool:
        """Whether ``state`` ends the turn waiting for the client (not the question already answered)."""
        return state in PAUSED and not (state == "input-required" and status_id and status_id == self.answered)


class Handoff:
    """The caller of ``send_message`` waits here for the stored user message (or the error)."""

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.message: StoredMessage | None = None
        self.error: BaseException | None = None

    def ok(self, message: StoredMessage) -> None:
        self.message = message
        self.event.set()

    def fail(self, error: BaseException) -> None:
        if not self.event.is_set():
            self.error = error
            self.event.set()


class Turns:
    """The live turns of this process, their waiters, and how each one ends."""

    def __init__(self, store: Store, *, task_timeout_s: float, poll_max_s: float, handle: Callable[[str], str]) -> None:
        self.store = store
        self.task_timeout_s = task_timeout_s
        self.poll_max_s = poll_max_s
        self.handle = handle
        self.live: dict[str, Turn] = {}
        self.listeners: dict[str, list[Callable[[str], Awaitable[None]]]] = {}
        self.versions: dict[str, int] = {}
        self._events: dict[str, anyio.Event] = {}
        self.tg: TaskGroup | None = None

    # --- waking waiters -------------------------------------------------------------------

    def event(self, session_id: str) -> anyio.Event:
        """Set at the next change of the session (in this process)."""
        ev = self._events.get(session_id)
        if ev is None:
            ev = self._events[session_id] = anyio.Event()
        return ev

    def notify(self, session_id: str) -> None:
        """The session changed: wake whoever waits on it."""
        self.versions[session_id] = self.versions.get(session_id, 0) + 1
        ev = self._events.pop(session_id, None)
        if ev is not None:
            ev.set()

    async def progress(self, turn: Turn, text: str) -> None:
        """Streamed text for waiters (kept, so a late waiter gets what came before)."""
        if not text:
            return
        turn.deltas.append(text)
        for fn in list(self.listeners.get(turn.session_id, ())):
            try:
                await fn(text)
            except Exception:
                log.debug("a progress listener failed", exc_info=True)
        self.notify(turn.session_id)

    # --- starting -------------------------------------------------------------------------

    async def begin(
        self,
        owner: str,
        session_id: str,
        link: AgentLink,
        text: str,
        *,
        context_id: str | None,
        task_id: str | None,
        dedupe_key: str | None,
        answered: str = "",
    ) -> StoredMessage:
        """Send ``text`` and store it once the agent accepted it; the turn goes on in the background.

        ``task_id`` (with the status messageId of its question in ``answered``) answers a task
        waiting for input."""
        if self.tg is None:
            raise RuntimeError("the a2a backend was not started")
        handoff = Handoff()
        turn = Turn(owner, session_id, link, new_message_id(), context_id or "", task_id or "", answered=answered)
        self.tg.start_soon(self._run, turn, text, dedupe_key, handoff)
        with anyio.move_on_after(link.timeout_s + 5):
            await handoff.event.wait()
        if not handoff.event.is_set():
            turn.scope.cancel()
            raise Unavailable(
                f"A2A agent {link.agent.name!r} ({link.agent.url}) did not accept the message within "
                f"SESSIONS_MCP_A2A__TIMEOUT_S + 5 ({link.timeout_s + 5:g}s); nothing was stored"
            )
        if handoff.error is not None:
            raise handoff.error
        assert handoff.message is not None
        return handoff.message

    def adopt(self, owner: str, session_id: str, link: AgentLink, ids: dict[str, str]) -> None:
        """Follow a task this process did not start (after a restart, or started elsewhere)."""
        if self.tg is None or session_id in self.live or not ids.get("task_id"):
            return
        turn = Turn(
            owner, session_id, link, ids.get("message_id", ""), ids.get("context_id", ""), ids["task_id"],
            answered=ids.get("answered", ""),
        )  # fmt: skip
        self.live[session_id] = turn
        self.tg.start_soon(self._resume, turn)

    async def _resume(self, turn: Turn) -> None:
        with turn.scope:
            try:
                await self._follow(turn, None)
            finally:
                self._drop(turn)

    def _drop(self, turn: Turn) -> None:
        if self.live.get(turn.session_id) is turn:
            del self.live[turn.session_id]
        self.notify(turn.session_id)

    async def _run(self, turn: Turn, text: str, dedupe_key: str | None, handoff: Handoff) -> None:
        previous = self.live.get(turn.session_id)
        if previous is not None:
            previous.scope.cancel()  # an answer to input-required: the old turn had ended
        self.live[turn.session_id] = turn
        events: AsyncGenerator[Event, None] | None = None
        with turn.scope:
            try:
                events = turn.link.send(
                    text, message_id=turn.message_id, context_id=turn.context_id or None,
                    task_id=turn.task_id or None,
                )  # fmt: skip
                try:
                    first = await anext(events)
                except StopAsyncIteration:
                    raise ProtocolError(
                        f"A2A agent {turn.link.agent.name!r} accepted the message but answered nothing"
                    ) from None
                turn.context_id = first.context_id or turn.context_id
                turn.task_id = first.task_id or (turn.task_id if first.kind != "message" else "")
                ids = ids_part(
                    context_id=turn.context_id, task_id=turn.task_id, message_id=turn.message_id,
                    answered=turn.answered,
                )  # fmt: skip
                got = None
                with anyio.CancelScope(shield=True):
                    got = await self.store.append_message(
                        turn.owner, turn.session_id, role="user", parts=[TextPart(text=text).model_dump(), ids],
                        text=text, new_status=Status.RUNNING, dedupe_key=dedupe_key,
                    )  # fmt: skip
                if got is None:
                    raise SessionsError(f"the session {self.handle(turn.session_id)} was deleted meanwhile")
                handoff.ok(stored_message(got[1]))
                self.notify(turn.session_id)
                if first.kind == "message":  # a direct reply, no task
                    await self.finish(turn, TaskView("", turn.context_id, "completed", first.parts))
                    return
                await self._absorb(turn, first)
                if not turn.done:
                    await self._follow(turn, events)
            except BaseException as exc:
                handoff.fail(exc)
                if not isinstance(exc, SessionsError | anyio.get_cancelled_exc_class()):
                    log.exception("a2a turn of %s failed", self.handle(turn.session_id))
                if handoff.message is not None and isinstance(exc, Exception) and not turn.done:
                    await self.fail(turn, str(exc) if isinstance(exc, SessionsError) else f"unexpected error: {exc}")
                if not isinstance(exc, Exception):
                    raise
            finally:
                if events is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        await events.aclose()
                self._drop(turn)

    # --- following ------------------------------------------------------------------------

    async def _absorb(self, turn: Turn, ev: Event) -> None:
        """One event of a stream: progress, or the end of the turn."""
        if ev.kind == "message":
            await self.finish(turn, TaskView(turn.task_id, turn.context_id, "completed", ev.parts))
            return
        if ev.state:
            turn.state = ev.state
        if ev.kind == "artifact":
            await self.progress(turn, text_of(ev.parts))
            return
        if ev.state in TERMINAL or turn.paused(ev.state, ev.status_id):
            await self._settle(turn, ev.task)
            return
        if ev.kind == "status":
            said = text_of(ev.parts)
            await self.progress(turn, said + "\n" if said else "")

    async def _settle(self, turn: Turn, seen: TaskView | None) -> None:
        """The task ended or paused: re-read it (the stream may not carry everything) and finish."""
        try:
            view = await turn.link.get_task(turn.task_id)
        except SessionsError:
            if seen is None:
                seen = TaskView(turn.task_id, turn.context_id, turn.state)
            view = seen
        if view.state not in TERMINAL and not turn.paused(view.state, view.status_id):
            return  # the re-read is behind the stream; keep following
        await self.finish(turn, view)

    async def _follow(self, turn: Turn, events: AsyncGenerator[Event, None] | None) -> None:
        with anyio.move_on_after(self.task_timeout_s) as timer:
            if events is not None:
                try:
                    async for ev in events:
                        await self._absorb(turn, ev)
                        if turn.done:
                            return
                except SessionsError as exc:
                    log.info("a2a stream of %s ended: %s", self.handle(turn.session_id), exc)
            await self._poll(turn)
        if timer.cancelled_caught and not turn.done:
            with anyio.CancelScope(shield=True):
                try:
                    with anyio.move_on_after(turn.link.timeout_s):
                        await turn.link.cancel(turn.task_id)
                except SessionsError:
                    pass
                await self.fail(
                    turn,
                    f"the A2A task {turn.task_id} did not finish within {TASK_TIMEOUT} ({self.task_timeout_s:g}s); "
                    "it was cancelled. Raise the setting for longer tasks, or send the message again",
                )

    async def _poll(self, turn: Turn) -> None:
        """Until the task ends: re-subscribe (streaming agents) or GetTask with backoff."""
        delay = FIRST_POLL_S
        failures = 0
        said = ""
        while not turn.done:
            try:
                view = await turn.link.get_task(turn.task_id)
                failures = 0
            except AuthError as exc:
                await self.fail(turn, str(exc))
                return
            except BackendError as exc:
                failures += 1
                if failures >= MAX_FAILURES or "no longer knows" in str(exc):
                    await self.fail(turn, str(exc))
                    return
                await anyio.sleep(delay)
                delay = min(delay * 1.5, self.poll_max_s)
                continue
            turn.state = view.state
            if view.state in TERMINAL or turn.paused(view.state, view.status_id):
                await self.finish(turn, view)
                return
            if view.status_text and view.status_text != said:
                said = view.status_text
                await self.progress(turn, said + "\n")
            facts = turn.link.facts
            if facts is not None and facts.streaming:
                try:
                    async with aclosing(turn.link.subscribe(turn.task_id)) as events:
                        async for ev in events:
                            await self._absorb(turn, ev)
                            if turn.done:
                                return
                    delay = FIRST_POLL_S  # the stream ended cleanly; read the task again at once
                    continue
                except SessionsError as exc:
                    log.info("a2a subscription to %s ended: %s", turn.task_id, exc)
            await anyio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max_s)

    # --- ending ---------------------------------------------------------------------------

    async def finish(self, turn: Turn, view: TaskView, *, interrupted: bool = False) -> None:
        """Write the turn's outcome: one assistant message (final message + artifacts) and the status."""
        turn.done = True
        parts = [*view.status_parts, *view.artifacts]
        status, error = view.status, None
        name = turn.link.agent.name
        if view.state in ("failed", "rejected"):
            why = view.status_text
            error = f"A2A agent {name!r} {'rejected' if view.state == 'rejected' else 'failed'} the task" + (
                f": {why}" if why else ""
            )
        elif view.state == "auth-required":
            why = view.status_text
            error = (
                f"A2A agent {name!r} asks for authorization this server cannot give (auth-required)"
                + (f": {why}" if why else "")
                + "; give the agent the credentials it needs out of band, then send the message again"
            )
        if (interrupted or turn.interrupted) and view.state != "completed":
            status, error = Status.IDLE, None
            parts.append(TextPart(text="[interrupted]").model_dump())
        with anyio.CancelScope(shield=True):
            if parts or view.state == "input-required":
                if not parts:
                    parts = [TextPart(text="(the agent asks for input)").model_dump()]
                ids = ids_part(
                    context_id=view.context_id or turn.context_id, task_id=view.id or turn.task_id,
                    message_id=turn.message_id, state=view.state,
                    question_id=view.status_id if view.state == "input-required" else "",
                )  # fmt: skip
                await self.store.append_message(
                    turn.owner, turn.session_id, role="assistant", parts=[*parts, ids], text=text_of(parts),
                    new_status=status, error=error, dedupe_key=f"a2a-reply:{turn.message_id}" if turn.message_id else None,
                )  # fmt: skip
            else:
                await self.store.update_session(
                    turn.owner, turn.session_id, status=status, error=error, clear_error=error is None
                )
        self.notify(turn.session_id)

    async def fail(self, turn: Turn, error: str) -> None:
        """End the turn ``failed`` with ``error`` (kept what arrived: nothing is written but the status)."""
        turn.done = True
        with anyio.CancelScope(shield=True):
            try:
                await self.store.update_session(turn.owner, turn.session_id, status=Status.FAILED, error=error)
            except Exception:
                log.exception("cannot record the failure of %s", self.handle(turn.session_id))
        self.notify(turn.session_id)
