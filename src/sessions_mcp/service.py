"""The session service: what every tool and resource calls.

It routes handles to backends and adds what no backend should repeat: opaque session-bound
cursors, bounded output (``max_chars``), waiting with heartbeat progress, and idempotency keys
stored in the shared store. It sees only neutral models.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from . import limits
from .backends.base import SessionBackend
from .backends.requests import CreateRequest, MessageQuery, SendRequest, SessionQuery
from .errors import InvalidArgument, Unsupported, quote
from .idempotent import idempotent
from .ids import Handle, decode_cursor, decode_page_token, encode_cursor, encode_page_token, parse_handle
from .models import BackendInfo, Message, Pending, Role, Session, Status, StoredMessage
from .paging import fit, public_session
from .results import (
    CreateSessionResult,
    DeleteResult,
    ListMessagesResult,
    ListSessionsResult,
    MessagesPage,
    SendMessageResult,
)
from .store.base import Store
from .store.deadline import writes_within

__all__ = [
    "DEFAULT_MAX_CHARS",
    "FINAL_READ_GRACE_S",
    "HEARTBEAT_S",
    "CreateSessionResult",
    "DeleteResult",
    "ListMessagesResult",
    "ListSessionsResult",
    "MessagesPage",
    "SendMessageResult",
    "SessionService",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], Awaitable[None]]
Asker = Callable[[Pending], Awaitable[str | None]]
"""Asks the person at the waiting client (elicitation) what an agent wants; None when they cannot."""

MAX_TEXT = 1_000_000
"""Largest message text accepted (characters)."""
DEFAULT_MAX_CHARS = 40_000
HEARTBEAT_S = 8.0
"""Progress is sent at least this often while waiting, so clients that reset timeouts keep waiting."""
WAITING = (Status.RUNNING, Status.AWAITING_REPLY)

DeferWait = Callable[[str, Any, int], Awaitable[None]]
"""Called with ``(principal, first_result, max_chars)`` instead of waiting for the agent."""
defer_wait: ContextVar[DeferWait | None] = ContextVar("sessions_mcp_defer_wait", default=None)
"""Set by the MCP tasks layer: a call that would wait stores a task instead and returns at once."""


def _check_text(text: str, what: str = "text") -> str:
    if not text or not text.strip():
        raise InvalidArgument(f"{what} is empty; write the message to send")
    if len(text) > MAX_TEXT:
        raise InvalidArgument(
            f"{what} is {len(text):,} characters; the limit is {MAX_TEXT:,}. Split it into several messages"
        )
    return text


T = TypeVar("T")

FINAL_READ_GRACE_S = 1.0
"""How long past ``timeout_s`` the session is re-read for the result (else the last known one)."""


async def bounded(deadline: float, read: Callable[[], Awaitable[T]]) -> T | None:
    """``await read()``, or None when it has not finished by ``deadline`` (monotonic seconds).

    Only for reads: abandoning one loses nothing.
    """
    with anyio.move_on_after(max(deadline - time.monotonic(), 0.0)):
        return await read()
    return None


class SessionService:
    """Routes calls to backends; owns waiting, cursors, truncation and idempotency."""

    def __init__(self, backends: dict[str, SessionBackend], store: Store) -> None:
        if not backends:
            raise ValueError("at least one backend is required")
        self.backends = backends
        self.default_backend = next(iter(backends))
        self.store = store
        self.on_remote_change: Callable[..., Awaitable[None]] | None = None
        """Called with a :class:`Handle` when a remote session is seen to change (notifications)."""
        self.before_interrupt: Callable[[str, str], Awaitable[None]] | None = None
        """Called with ``(principal, session_id)`` before a turn is interrupted (tasks end cancelled)."""

    async def _touched(self, be: SessionBackend, native_id: str) -> None:
        """Report a change to a session of a backend without its own change feed."""
        if self.on_remote_change is None or getattr(be, "feed", None) is not None:
            return
        try:
            await self.on_remote_change(Handle(be.name, native_id), owner=None)
        except Exception:
            log.debug("change notification failed", exc_info=True)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        """Start every backend (they keep serving when a backend is misconfigured)."""
        for backend in self.backends.values():
            try:
                await backend.start(tg)
            except Exception:
                log.exception("backend %s failed to start", backend.name)

    async def aclose(self) -> None:
        """Close every backend."""
        for backend in self.backends.values():
            try:
                await backend.aclose()
            except Exception:
                log.exception("backend %s failed to close", backend.name)

    # --- helpers --------------------------------------------------------------------------

    def infos(self) -> list[BackendInfo]:
        """The enabled backends, default first."""
        return [b.info(default=name == self.default_backend) for name, b in self.backends.items()]

    def handle(self, session_id: str) -> tuple[Handle, SessionBackend]:
        """Parse a session id and find its backend."""
        h = parse_handle(session_id, self.backends)
        return h, self.backends[h.backend]

    def _public_id(self, query: str) -> Handle | None:
        backend, sep, native = query.strip().partition(":")
        return Handle(backend, native) if sep and native and backend in self.backends else None

    def backend_named(self, name: str | None) -> SessionBackend:
        """The backend called ``name`` (default when None)."""
        limits.check(name, "backend", limits.BACKEND)
        name = name or self.default_backend
        if name not in self.backends:
            raise InvalidArgument(f"unknown backend {quote(name)}; enabled backends: {', '.join(self.backends)}")
        return self.backends[name]

    def agents(self) -> list[dict[str, Any]]:
        """The local backend's agents (for the index, descriptions and completions); [] without it."""
        local = self.backends.get("local")
        infos = getattr(local, "agent_infos", None)
        return infos() if infos is not None else []

    session = staticmethod(public_session)
    fit = staticmethod(fit)

    # --- tools ----------------------------------------------------------------------------

    async def create_session(
        self,
        principal: str,
        *,
        prompt: str | None,
        title: str | None,
        backend: str | None,
        model: str | None,
        system: str | None,
        wait: bool | None,
        timeout_s: float,
        idempotency_key: str | None,
        max_chars: int = DEFAULT_MAX_CHARS,
        progress: Progress | None = None,
        agent: str | None = None,
        workdir: str | None = None,
        ask: Asker | None = None,
    ) -> CreateSessionResult:
        """Create a session, optionally send the first prompt and wait for the reply.

        ``agent`` picks what answers a local session's user turns (``none``, ``command``, ``openai``).
        """
        be = self.backend_named(backend)
        if prompt is not None:
            _check_text(prompt, "prompt")
        limits.check(title, "title", limits.TITLE)
        limits.check(model, "model", limits.MODEL)
        limits.check(system, "system", limits.SYSTEM)
        limits.check(agent, "agent", limits.AGENT)
        if system is not None and not be.capabilities.system_prompt:
            raise Unsupported(be.name, "take a system prompt", "leave system empty")
        params = {"prompt": prompt, "title": title, "backend": be.name, "model": model, "system": system}
        for key, value in (("agent", agent), ("workdir", workdir)):
            if value is not None:
                if be.name != "local" and not (key == "agent" and be.name == "a2a"):
                    raise Unsupported(be.name, f"choose the {key} of a session", f"leave {key} empty")
                params[key] = value

        async def write(dedupe: str | None) -> CreateSessionResult:
            request = CreateRequest(principal=principal, prompt=prompt, title=title, model=model, system=system,
                                    agent=agent, workdir=workdir, dedupe_key=dedupe)  # fmt: skip
            created = await be.create_session(request)
            sid = str(Handle(be.name, created.session.native_id))
            await self._touched(be, created.session.native_id)
            msgs, cursor, _ = fit(sid, created.written, start=None, offset=0, max_chars=max_chars)
            return CreateSessionResult(
                session=public_session(be.name, created.session),
                messages=[Message.model_validate(m) for m in msgs],
                cursor=cursor,
                status=created.session.status,
                pending=created.session.pending,
            )

        with writes_within(timeout_s):  # a lock held elsewhere delays this call by its timeout_s at most
            first: CreateSessionResult = await idempotent(
                self.store, principal, "create_session", idempotency_key, params, CreateSessionResult, write,
                stale_after_s=timeout_s + 120, wait_s=timeout_s,
            )  # fmt: skip
        if first.replayed or prompt is None:
            return first
        rec = await be.get_session(principal, first.session.id.partition(":")[2])
        attached = be.agent_attached(rec) if wait is None else wait
        return await self._finish_wait(principal, be, first, attached, timeout_s, max_chars, progress, ask)

    async def send_message(
        self,
        principal: str,
        *,
        session_id: str,
        text: str,
        role: Role,
        wait: bool | None,
        timeout_s: float,
        idempotency_key: str | None,
        in_reply_to: str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        progress: Progress | None = None,
        ask: Asker | None = None,
    ) -> SendMessageResult:
        """Append a message; for a user message, optionally wait for the reply."""
        h, be = self.handle(session_id)
        _check_text(text)
        if role not in ("user", "assistant"):
            raise InvalidArgument("role must be 'user' or 'assistant'")
        if role == "assistant" and not be.capabilities.assistant_messages:
            raise Unsupported(be.name, "take role='assistant' messages", "only the local mailbox takes them")
        reply_position: str | None = None
        if in_reply_to is not None:
            if role != "assistant":
                raise InvalidArgument("in_reply_to goes with role='assistant' only")
            reply_position, _ = decode_cursor(str(h), in_reply_to)
        params = {"session_id": str(h), "text": text, "role": role, "in_reply_to": in_reply_to}

        async def write(dedupe: str | None) -> SendMessageResult:
            msg = await be.send_message(
                SendRequest(principal, h.native_id, text, role, dedupe_key=dedupe, in_reply_to=reply_position)
            )
            await self._touched(be, h.native_id)
            rec = await be.get_session(principal, h.native_id)
            sid = str(h)
            msgs, cursor, _ = fit(sid, [msg], start=None, offset=0, max_chars=max_chars)
            return SendMessageResult(
                message_id=msg.id,
                session=public_session(be.name, rec),
                messages=[Message.model_validate(m) for m in msgs],
                cursor=encode_cursor(sid, msg.position) if msgs and not msgs[-1]["truncated"] else cursor,
                status=rec.status,
                pending=rec.pending,
            )

        with writes_within(timeout_s):  # a lock held elsewhere delays this call by its timeout_s at most
            first: SendMessageResult = await idempotent(
                self.store, principal, "send_message", idempotency_key, params, SendMessageResult, write,
                stale_after_s=timeout_s + 120, wait_s=timeout_s,
            )  # fmt: skip
        if first.replayed or role == "assistant":
            return first
        return await self._finish_wait(principal, be, first, wait, timeout_s, max_chars, progress, ask)

    async def _finish_wait(
        self,
        principal: str,
        be: SessionBackend,
        first: Any,
        wait: bool | None,
        timeout_s: float,
        max_chars: int,
        progress: Progress | None,
        ask: Asker | None = None,
    ) -> Any:
        """Wait for the turn the write started and add its replies to ``first`` (when ``wait``;
        None: when an agent is attached)."""
        sid: str = first.session.id
        native = sid.partition(":")[2]
        if wait is None:
            wait = be.agent_attached(await be.get_session(principal, native))
        if not wait:
            return first
        if (defer := defer_wait.get()) is not None:
            await defer(principal, first, max_chars)
            return first
        cursor: str = first.cursor
        position, _ = decode_cursor(sid, cursor)
        deadline = time.monotonic() + timeout_s
        asking = getattr(be, "asking", None)  # the local backend asks a waiting client's person first
        async with asking(native, ask) if ask is not None and asking is not None else contextlib.nullcontext():
            replies, status = await self._wait_for_turn(principal, be, native, position, deadline, progress)
        return await self._compose(principal, be, first, cursor, replies, status, max_chars, deadline)

    async def turn_state(self, principal: str, first: Any, max_chars: int) -> tuple[Status, Any]:
        """Where the turn a deferred call started stands, without waiting.

        Returns the session status and the result the waiting call would return if the turn
        ended now (``first`` is the call's result when the user message was stored).
        """
        sid: str = first.session.id
        h, be = self.handle(sid)
        position, _ = decode_cursor(sid, first.cursor)
        page = await be.list_messages(MessageQuery(principal, h.native_id, after=position, limit=200))
        composed = await self._compose(principal, be, first, first.cursor, page.items, page.status, max_chars, None)
        return page.status, composed

    async def _compose(
        self,
        principal: str,
        be: SessionBackend,
        first: Any,
        cursor: str,
        replies: Sequence[StoredMessage],
        status: Status,
        max_chars: int,
        deadline: float | None,
    ) -> Any:
        sid: str = first.session.id
        native = sid.partition(":")[2]
        position, _ = decode_cursor(sid, cursor)
        budget = max(max_chars - sum(len(m.text) for m in first.messages), 1)
        more, next_cursor, _ = fit(sid, replies, start=position, offset=0, max_chars=budget)
        if deadline is None:
            rec = await be.get_session(principal, native)
        else:
            # a healthy backend answers in milliseconds; a hung one must not hold the call past its timeout
            rec = await bounded(deadline + FINAL_READ_GRACE_S, lambda: be.get_session(principal, native))
        session = (
            public_session(be.name, rec) if rec is not None else first.session.model_copy(update={"status": status})
        )
        return first.model_copy(
            update={
                "messages": [*first.messages, *(Message.model_validate(m) for m in more)],
                "cursor": next_cursor if more else cursor,
                "status": status,
                "session": session,
                "pending": session.pending if status is Status.NEEDS_INPUT else None,
            }
        )

    async def _wait_for_turn(
        self,
        principal: str,
        be: SessionBackend,
        native: str,
        position: str | None,
        deadline: float,
        progress: Progress | None,
    ) -> tuple[list[StoredMessage], Status]:
        """Wait until the turn after ``position`` ends or the ``deadline`` (monotonic) passes.

        Never cancels work. Reads still running at the deadline are abandoned (they are reads: nothing
        is lost), so a slow or hung backend cannot hold the call past its ``timeout_s``.
        """
        started = time.monotonic()
        last_progress = started
        streamed: list[str] = []

        async def on_delta(text: str) -> None:
            nonlocal last_progress
            streamed.append(text)
            if progress is not None:
                last_progress = time.monotonic()
                await progress("".join(streamed)[-2000:])

        async with be.watch(principal, native, progress=on_delta) as watch:
            read = await bounded(
                deadline, lambda: be.list_messages(MessageQuery(principal, native, after=position, limit=200))
            )
            if read is None:
                return [], Status.RUNNING  # the turn was started; nothing could be read in time
            page = read
            while True:
                replies = [m for m in page.items if m.role != "user"]
                if page.status is Status.NEEDS_INPUT or (
                    page.status not in WAITING and (replies or page.status in (Status.IDLE, Status.FAILED))
                ):
                    return page.items, page.status
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return page.items, page.status
                beat = max(0.0, HEARTBEAT_S - (time.monotonic() - last_progress))
                if await watch.next(min(remaining, beat) if progress is not None else remaining):
                    before = (len(page.items), page.status)
                    read = await bounded(
                        deadline, lambda: be.list_messages(MessageQuery(principal, native, after=position, limit=200))
                    )
                    if read is None:
                        return page.items, page.status
                    page = read
                    if (len(page.items), page.status) != before:
                        await self._touched(be, native)
                elif progress is not None and time.monotonic() - last_progress >= HEARTBEAT_S - 0.05:
                    # nothing changed: a heartbeat keeps timeout-resetting clients waiting, no re-read
                    last_progress = time.monotonic()
                    waited = int(last_progress - started)
                    what = "waiting for a reply" if page.status is Status.AWAITING_REPLY else "agent is working"
                    await progress(f"{what} ({waited}s, status {page.status.value})")

    async def list_messages(
        self,
        principal: str,
        *,
        session_id: str,
        after: str | None,
        limit: int,
        roles: Sequence[Role] | None,
        wait_s: float,
        max_chars: int = DEFAULT_MAX_CHARS,
        progress: Progress | None = None,
    ) -> MessagesPage:
        """A page after a cursor; blocks up to ``wait_s`` when nothing is new."""
        h, be = self.handle(session_id)
        sid = str(h)
        if not 1 <= limit <= 200:
            raise InvalidArgument(f"limit must be between 1 and 200 (got {limit})")
        if not 0 <= wait_s <= 300:
            raise InvalidArgument(f"wait_s must be between 0 and 300 seconds (got {wait_s:g})")
        position, offset = decode_cursor(sid, after) if after else (None, 0)
        deadline = time.monotonic() + wait_s
        page = await be.list_messages(MessageQuery(principal, h.native_id, after=position, limit=limit, roles=roles))
        if not page.items and wait_s > 0:
            last_beat = time.monotonic()
            async with be.watch(principal, h.native_id) as watch:
                while not page.items:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    beat = HEARTBEAT_S if progress is not None else remaining
                    changed = await watch.next(min(remaining, beat))
                    if not changed:
                        # nothing changed: re-reading every heartbeat cost 4.6% of a core with 1,000 waiters
                        if progress is not None and time.monotonic() - last_beat >= HEARTBEAT_S - 0.05:
                            last_beat = time.monotonic()
                            await progress(f"no new messages yet (status {page.status.value})")
                        continue
                    read = await bounded(
                        deadline,
                        lambda: be.list_messages(
                            MessageQuery(principal, h.native_id, after=position, limit=limit, roles=roles)
                        ),
                    )
                    if read is None:
                        break  # the wait is over; what was read before stands
                    page = read
        msgs, next_cursor, cut = fit(sid, page.items, start=position, offset=offset, max_chars=max_chars)
        if not msgs and after:
            next_cursor = after
        return MessagesPage(messages=msgs, next_cursor=next_cursor, has_more=page.has_more or cut, status=page.status)

    async def get_session(self, principal: str, session_id: str) -> Session:
        """One session."""
        h, be = self.handle(session_id)
        return public_session(be.name, await be.get_session(principal, h.native_id))

    async def list_sessions(
        self,
        principal: str,
        *,
        backend: str | None,
        status: Sequence[Status] | None,
        query: str | None,
        cursor: str | None,
        limit: int,
    ) -> ListSessionsResult:
        """Sessions of one backend, or of every enabled backend merged by recency."""
        if not 1 <= limit <= 200:
            raise InvalidArgument(f"limit must be between 1 and 200 (got {limit})")
        limits.check(query, "query", limits.QUERY)
        if query is not None and not backend:
            named = self._public_id(query)
            if named is not None:  # a session id as tools hand it out: look in its backend, by native id
                backend, query = named.backend, named.native_id
        names = [self.backend_named(backend).name] if backend else list(self.backends)
        state: dict[str, object] = decode_page_token(cursor) if cursor else {}
        if cursor and set(state) - set(names):
            raise InvalidArgument("bad cursor for list_sessions: it was made for other filters")
        statuses = frozenset(status) if status else None
        sessions: list[Session] = []
        next_state: dict[str, object] = {}
        for name in names:
            token = state.get(name) if cursor else None
            if cursor and name not in state:
                continue  # that backend was exhausted on an earlier page
            page = await self.backends[name].list_sessions(
                SessionQuery(
                    principal=principal, statuses=statuses, query=query,
                    cursor=token if isinstance(token, str) else None, limit=limit,
                )
            )  # fmt: skip
            sessions.extend(public_session(name, r) for r in page.items)
            if page.next_cursor:
                next_state[name] = page.next_cursor
        sessions.sort(key=lambda s: s.updated_at, reverse=True)
        return ListSessionsResult(sessions=sessions, next_cursor=encode_page_token(next_state) if next_state else None)

    async def rename_session(self, principal: str, session_id: str, title: str) -> Session:
        """Set a session's title."""
        h, be = self.handle(session_id)
        if not title.strip():
            raise InvalidArgument("title is empty")
        limits.check(title, "title", limits.TITLE)
        if not be.capabilities.rename:
            raise Unsupported(be.name, "rename sessions")
        rec = await be.rename_session(principal, h.native_id, title.strip())
        await self._touched(be, h.native_id)
        return public_session(be.name, rec)

    async def interrupt_session(self, principal: str, session_id: str) -> Session:
        """Stop the current turn."""
        h, be = self.handle(session_id)
        if not be.capabilities.interrupt:
            raise Unsupported(be.name, "interrupt a running turn", "wait for it, or send a new message")
        if self.before_interrupt is not None:
            await self.before_interrupt(principal, str(h))
        rec = await be.interrupt_session(principal, h.native_id)
        await self._touched(be, h.native_id)
        return public_session(be.name, rec)

    async def delete_session(self, principal: str, session_id: str) -> DeleteResult:
        """Delete a session."""
        h, be = self.handle(session_id)
        if not be.capabilities.delete:
            raise Unsupported(be.name, "delete sessions")
        await be.delete_session(principal, h.native_id)
        await self._touched(be, h.native_id)
        return DeleteResult(session_id=str(h))
