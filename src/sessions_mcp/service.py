"""The session service: what every tool and resource calls.

It routes handles to backends and adds what no backend should repeat: opaque session-bound
cursors, bounded output (``max_chars``), waiting with heartbeat progress, and idempotency keys
stored in the shared store. It sees only neutral models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, Literal, TypeVar

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel, Field

from .backends.base import CreateRequest, SessionBackend, SessionQuery
from .errors import IdempotencyConflict, InvalidArgument, Unsupported
from .ids import Handle, decode_cursor, decode_page_token, encode_cursor, encode_page_token, parse_handle
from .models import BackendInfo, Message, Role, Session, SessionRecord, Status, StoredMessage, TextPart
from .store.base import Store

log = logging.getLogger(__name__)

Progress = Callable[[str], Awaitable[None]]

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


class CreateSessionResult(BaseModel):
    """What ``create_session`` returns."""

    session: Session
    messages: list[Message] = Field(description="The message the call wrote, then replies that arrived.")
    cursor: str = Field(description="Pass as `after` to list_messages to read what comes next.")
    status: Status
    replayed: bool = Field(default=False, description="True when an idempotency_key returned an earlier result.")


class SendMessageResult(BaseModel):
    """What ``send_message`` returns."""

    message_id: str
    session: Session
    messages: list[Message] = Field(description="The message the call wrote, then replies that arrived.")
    cursor: str = Field(description="Pass as `after` to list_messages to read what comes next.")
    status: Status
    replayed: bool = Field(default=False, description="True when an idempotency_key returned an earlier result.")


class ListMessagesResult(BaseModel):
    """A page of messages."""

    messages: list[Message]
    next_cursor: str = Field(description="Pass as `after` next time; stays put on an empty page.")
    has_more: bool
    status: Status


class ListSessionsResult(BaseModel):
    """A page of sessions."""

    sessions: list[Session]
    next_cursor: str | None = None


class DeleteResult(BaseModel):
    """What ``delete_session`` returns."""

    deleted: Literal[True] = True
    session_id: str


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
        h = parse_handle(session_id, list(self.backends))
        return h, self.backends[h.backend]

    def backend_named(self, name: str | None) -> SessionBackend:
        """The backend called ``name`` (default when None)."""
        name = name or self.default_backend
        if name not in self.backends:
            raise InvalidArgument(f"unknown backend {name!r}; enabled backends: {', '.join(self.backends)}")
        return self.backends[name]

    @staticmethod
    def session(backend: str, rec: SessionRecord) -> Session:
        """A backend record as the public model."""
        h = Handle(backend, rec.native_id)
        return Session(
            id=str(h),
            backend=backend,
            title=rec.title,
            status=rec.status,
            error=rec.error,
            created_at=rec.created_at,
            updated_at=rec.updated_at,
            message_count=rec.message_count,
            transcript_uri=h.transcript_uri,
            messages_uri=h.messages_uri,
            model=rec.model,
            agent=rec.agent,
        )

    @staticmethod
    def fit(
        session_id: str,
        items: Sequence[StoredMessage],
        *,
        start: str | None,
        offset: int,
        max_chars: int,
    ) -> tuple[list[Message], str, bool]:
        """Cut a run of messages to ``max_chars`` of text.

        Returns the public messages, the cursor after what was returned, and whether
        anything was held back. A message that does not fit is either left for the next page
        (when others came before it) or cut, with a cursor that points inside it.
        """
        budget = max_chars
        position = start
        out: list[Message] = []
        for i, m in enumerate(items):
            skip = offset if i == 0 else 0
            full = m.text
            rest = full[skip:]
            if len(rest) <= budget:
                parts: list[Any] = list(m.parts) if skip == 0 else [TextPart(text=rest)]
                out.append(
                    Message(
                        id=m.id, session_id=session_id, role=m.role, text=rest, parts=parts,
                        created_at=m.created_at, truncated=skip > 0, cursor=encode_cursor(session_id, m.position),
                        text_offset=skip, text_length=len(full) if skip else None,
                    )
                )  # fmt: skip
                budget -= len(rest)
                position = m.position
                continue
            if out:
                return out, encode_cursor(session_id, position), True
            piece = rest[: max(budget, 1)]
            resume = encode_cursor(session_id, position, skip + len(piece))
            out.append(
                Message(
                    id=m.id, session_id=session_id, role=m.role, text=piece, parts=[TextPart(text=piece)],
                    created_at=m.created_at, truncated=True, cursor=resume, text_offset=skip, text_length=len(full),
                )
            )  # fmt: skip
            return out, resume, True
        return out, encode_cursor(session_id, position, offset if not out else 0), False

    async def _idempotent(
        self,
        principal: str,
        tool: str,
        key: str | None,
        params: dict[str, Any],
        model: type[BaseModel],
        run: Callable[[str | None], Awaitable[BaseModel]],
        *,
        stale_after_s: float,
    ) -> Any:
        if key is None:
            return await run(None)
        if not key.strip() or len(key) > 200:
            raise InvalidArgument("idempotency_key must be 1-200 characters")
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
        rec = await self.store.idem_claim(principal, tool, key, digest, stale_after_ms=int(stale_after_s * 1000))
        if rec is not None:
            if rec.params_hash != digest:
                raise IdempotencyConflict(
                    f"idempotency_key {key!r} was already used for a {tool} call with other parameters; "
                    "use a new key for a new request"
                )
            if rec.state == "done" and rec.result:
                return model.model_validate_json(rec.result).model_copy(update={"replayed": True})
            raise IdempotencyConflict(
                f"a {tool} call with idempotency_key {key!r} is still in progress; retry in a few seconds"
            )
        dedupe = hashlib.sha256(f"{principal}\x1f{tool}\x1f{key}".encode()).hexdigest()
        result: BaseModel | None = None
        try:
            with anyio.CancelScope(shield=True):
                result = await run(dedupe)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.idem_release(principal, tool, key)
            raise
        assert result is not None
        with anyio.CancelScope(shield=True):
            await self.store.idem_complete(principal, tool, key, result.model_dump_json())
        return result

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
    ) -> CreateSessionResult:
        """Create a session, optionally send the first prompt and wait for the reply.

        ``agent`` picks what answers a local session's user turns (``none``, ``command``, ``openai``).
        """
        be = self.backend_named(backend)
        if prompt is not None:
            _check_text(prompt, "prompt")
        if title is not None and len(title) > 500:
            raise InvalidArgument("title is longer than 500 characters")
        if system is not None and not be.capabilities.system_prompt:
            raise Unsupported(be.name, "take a system prompt", "leave system empty")
        params = {"prompt": prompt, "title": title, "backend": be.name, "model": model, "system": system}
        if agent is not None:
            if be.name != "local":
                raise Unsupported(be.name, "choose the agent of a session", "leave agent empty")
            params["agent"] = agent

        async def write(dedupe: str | None) -> CreateSessionResult:
            created = await be.create_session(
                CreateRequest(
                    principal=principal,
                    prompt=prompt,
                    title=title,
                    model=model,
                    system=system,
                    agent=agent,
                    dedupe_key=dedupe,
                )
            )
            sid = str(Handle(be.name, created.session.native_id))
            await self._touched(be, created.session.native_id)
            msgs, cursor, _ = self.fit(sid, created.written, start=None, offset=0, max_chars=max_chars)
            return CreateSessionResult(
                session=self.session(be.name, created.session),
                messages=msgs,
                cursor=cursor,
                status=created.session.status,
            )

        first: CreateSessionResult = await self._idempotent(
            principal, "create_session", idempotency_key, params, CreateSessionResult, write,
            stale_after_s=timeout_s + 120,
        )  # fmt: skip
        if first.replayed or prompt is None:
            return first
        rec = await be.get_session(principal, first.session.id.partition(":")[2])
        if wait is None:
            wait = be.agent_attached(rec)
        if not wait:
            return first
        if (defer := defer_wait.get()) is not None:
            await defer(principal, first, max_chars)
            return first
        return await self._finish_wait(principal, be, first, first.cursor, timeout_s, max_chars, progress)

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
                principal, h.native_id, text, role, dedupe_key=dedupe, in_reply_to=reply_position
            )
            await self._touched(be, h.native_id)
            rec = await be.get_session(principal, h.native_id)
            sid = str(h)
            msgs, cursor, _ = self.fit(sid, [msg], start=None, offset=0, max_chars=max_chars)
            return SendMessageResult(
                message_id=msg.id,
                session=self.session(be.name, rec),
                messages=msgs,
                cursor=encode_cursor(sid, msg.position) if msgs and not msgs[-1].truncated else cursor,
                status=rec.status,
            )

        first: SendMessageResult = await self._idempotent(
            principal, "send_message", idempotency_key, params, SendMessageResult, write,
            stale_after_s=timeout_s + 120,
        )  # fmt: skip
        if first.replayed or role == "assistant":
            return first
        if wait is None:
            wait = be.agent_attached(await be.get_session(principal, h.native_id))
        if not wait:
            return first
        if (defer := defer_wait.get()) is not None:
            await defer(principal, first, max_chars)
            return first
        return await self._finish_wait(principal, be, first, first.cursor, timeout_s, max_chars, progress)

    async def _finish_wait(
        self,
        principal: str,
        be: SessionBackend,
        first: Any,
        cursor: str,
        timeout_s: float,
        max_chars: int,
        progress: Progress | None,
    ) -> Any:
        sid: str = first.session.id
        native = sid.partition(":")[2]
        position, _ = decode_cursor(sid, cursor)
        deadline = time.monotonic() + timeout_s
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
        page = await be.list_messages(principal, h.native_id, after=position, limit=200)
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
        more, next_cursor, _ = self.fit(sid, replies, start=position, offset=0, max_chars=budget)
        if deadline is None:
            rec = await be.get_session(principal, native)
        else:
            # a healthy backend answers in milliseconds; a hung one must not hold the call past its timeout
            rec = await bounded(deadline + FINAL_READ_GRACE_S, lambda: be.get_session(principal, native))
        session = self.session(be.name, rec) if rec is not None else first.session.model_copy(update={"status": status})
        return first.model_copy(
            update={
                "messages": [*first.messages, *more],
                "cursor": next_cursor if more else cursor,
                "status": status,
                "session": session,
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
            read = await bounded(deadline, lambda: be.list_messages(principal, native, after=position, limit=200))
            if read is None:
                return [], Status.RUNNING  # the turn was started; nothing could be read in time
            page = read
            while True:
                replies = [m for m in page.items if m.role != "user"]
                if page.status not in WAITING and (replies or page.status in (Status.IDLE, Status.FAILED)):
                    return page.items, page.status
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return page.items, page.status
                beat = max(0.0, HEARTBEAT_S - (time.monotonic() - last_progress))
                if await watch.next(min(remaining, beat) if progress is not None else remaining):
                    before = (len(page.items), page.status)
                    read = await bounded(
                        deadline, lambda: be.list_messages(principal, native, after=position, limit=200)
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
    ) -> ListMessagesResult:
        """A page after a cursor; blocks up to ``wait_s`` when nothing is new."""
        h, be = self.handle(session_id)
        sid = str(h)
        if not 1 <= limit <= 200:
            raise InvalidArgument(f"limit must be between 1 and 200 (got {limit})")
        if not 0 <= wait_s <= 300:
            raise InvalidArgument(f"wait_s must be between 0 and 300 seconds (got {wait_s:g})")
        position, offset = decode_cursor(sid, after) if after else (None, 0)
        deadline = time.monotonic() + wait_s
        page = await be.list_messages(principal, h.native_id, after=position, limit=limit, roles=roles)
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
                        lambda: be.list_messages(principal, h.native_id, after=position, limit=limit, roles=roles),
                    )
                    if read is None:
                        break  # the wait is over; what was read before stands
                    page = read
        msgs, next_cursor, cut = self.fit(sid, page.items, start=position, offset=offset, max_chars=max_chars)
        if not msgs and after:
            next_cursor = after
        return ListMessagesResult(
            messages=msgs, next_cursor=next_cursor, has_more=page.has_more or cut, status=page.status
        )

    async def get_session(self, principal: str, session_id: str) -> Session:
        """One session."""
        h, be = self.handle(session_id)
        return self.session(be.name, await be.get_session(principal, h.native_id))

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
            sessions.extend(self.session(name, r) for r in page.items)
            if page.next_cursor:
                next_state[name] = page.next_cursor
        sessions.sort(key=lambda s: s.updated_at, reverse=True)
        return ListSessionsResult(sessions=sessions, next_cursor=encode_page_token(next_state) if next_state else None)

    async def rename_session(self, principal: str, session_id: str, title: str) -> Session:
        """Set a session's title."""
        h, be = self.handle(session_id)
        if not title.strip():
            raise InvalidArgument("title is empty")
        if len(title) > 500:
            raise InvalidArgument("title is longer than 500 characters")
        if not be.capabilities.rename:
            raise Unsupported(be.name, "rename sessions")
        rec = await be.rename_session(principal, h.native_id, title.strip())
        await self._touched(be, h.native_id)
        return self.session(be.name, rec)

    async def interrupt_session(self, principal: str, session_id: str) -> Session:
        """Stop the current turn."""
        h, be = self.handle(session_id)
        if not be.capabilities.interrupt:
            raise Unsupported(be.name, "interrupt a running turn", "wait for it, or send a new message")
        if self.before_interrupt is not None:
            await self.before_interrupt(principal, str(h))
        rec = await be.interrupt_session(principal, h.native_id)
        await self._touched(be, h.native_id)
        return self.session(be.name, rec)

    async def delete_session(self, principal: str, session_id: str) -> DeleteResult:
        """Delete a session."""
        h, be = self.handle(session_id)
        if not be.capabilities.delete:
            raise Unsupported(be.name, "delete sessions")
        await be.delete_session(principal, h.native_id)
        await self._touched(be, h.native_id)
        return DeleteResult(session_id=str(h))
