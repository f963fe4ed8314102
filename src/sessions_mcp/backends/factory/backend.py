"""FactoryBackend: Factory's public Sessions API v0 behind the neutral backend interface.

Mapping decisions (``docs/backend-factory.md`` explains them for users):

- Status: ``idle`` → idle, ``pending``/``running`` → running. After this process posts a user
  message the session reads ``running`` until the turn is *observed* to finish (the API was
  seen busy and then idle, or a non-user message follows ours, or :attr:`TURN_GRACE_S` passed
  with the API idle), so a waiter never returns early because the status had not flipped yet.
- Positions: ``"<index>.<message id>"`` (1-based index in the oldest-first list; ``0`` when not
  known yet). Listing after a position walks the API's cursor pages, starting from a cached
  server cursor near the index, and finds the message by id, so positions stay valid across
  restarts and when the index hint is stale.
- ``create_session(prompt=...)`` creates, sets the title (``PATCH {"title"}``), then posts the
  first message; the API has no inline first prompt.
- Waiting polls the session with backoff (0.25 s growing to 3 s) only while someone waits, and
  reports each new assistant message through ``progress``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import httpx2

from ..._http import RetryPolicy
from ...diagnostics import Check
from ...errors import (
    AuthError,
    BackendError,
    BadCursor,
    ConfigError,
    InvalidArgument,
    SessionsError,
    Unavailable,
    Unsupported,
)
from ...models import (
    Capabilities,
    MessagePage,
    Role,
    SessionPage,
    SessionRecord,
    Status,
    StoredMessage,
    TextPart,
    parts_text,
)
from ..base import CreateRequest, CreateResult, ProgressFn, SessionBackend, SessionQuery, Watch
from .client import PAGE_MAX, FactoryClient
from .mapping import content_to_parts, from_ms, role, wire_status
from .wire import WireMessage, WireSession

if TYPE_CHECKING:
    from ...settings import FactorySettings

log = logging.getLogger(__name__)

AGENT = "factory-droid"


@dataclass(slots=True)
class _Turn:
    """A user message this process posted whose reply has not been observed yet."""

    message_id: str
    posted_at: float
    seen_busy: bool = False
    replied: bool = False
    index: int | None = None


def _parse_position(position: str) -> tuple[int, str]:
    hint, dot, mid = position.partition(".")
    try:
        index = int(hint)
    except ValueError:
        index = -1
    if not dot or not mid or index < 0:
        raise InvalidArgument("bad cursor: pass a cursor returned by this server for this session")
    return index, mid


def _position(index: int, message_id: str) -> str:
    return f"{index}.{message_id}"


class FactoryBackend(SessionBackend):
    """Sessions in Factory (``/api/v0/sessions``), answered by Factory's Droid agents."""

    name = "factory"
    capabilities = Capabilities(
        rename=True, delete=True, interrupt=True, assistant_messages=False, streaming=False,
        system_prompt=False, model_choice=True,
    )  # fmt: skip

    TURN_GRACE_S = 30.0
    """How long an idle API status is not believed right after posting (the turn may not have started)."""
    POLL_INITIAL_S = 0.25
    POLL_MAX_S = 3.0
    POLL_GROWTH = 1.6

    def __init__(
        self,
        settings: FactorySettings,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self.client = FactoryClient(
            base_url=settings.base_url,
            api_key=key,
            computer_id=settings.computer_id,
            read_timeout_s=settings.timeout_s,
            transport=transport,
            policy=policy,
        )
        self._turns: dict[str, _Turn] = {}
        self._cursors: dict[str, dict[int, str | None]] = {}
        """native id -> {messages before the page: the API cursor of that page}."""

    async def aclose(self) -> None:
        await self.client.aclose()

    @staticmethod
    def subject(native_id: str) -> str:
        """The public handle, used in errors."""
        return f"factory:{native_id}"

    # --- status and records -------------------------------------------------------------------

    def _status(self, native_id: str, api_status: str | None) -> Status:
        status = wire_status(api_status)
        turn = self._turns.get(native_id)
        if turn is None:
            return status
        if status is Status.RUNNING:
            turn.seen_busy = True
            return status
        if status is Status.FAILED:
            self._turns.pop(native_id, None)
            return status
        if turn.seen_busy or turn.replied or time.monotonic() - turn.posted_at > self.TURN_GRACE_S:
            self._turns.pop(native_id, None)
            return Status.IDLE
        return Status.RUNNING

    def _record(self, ws: WireSession, *, status: Status | None = None) -> SessionRecord:
        st = status if status is not None else self._status(ws.session_id, ws.status)
        settings = ws.session_settings
        return SessionRecord(
            native_id=ws.session_id,
            title=ws.title,
            status=st,
            error=f"Factory reported status {ws.status!r}" if st is Status.FAILED else None,
            created_at=from_ms(ws.created_at),
            updated_at=from_ms(ws.updated_at or ws.created_at),
            message_count=ws.message_count,
            model=settings.model if settings is not None else None,
            agent=AGENT,
        )

    def _forget(self, native_id: str) -> None:
        self._turns.pop(native_id, None)
        self._cursors.pop(native_id, None)

    # --- sessions -----------------------------------------------------------------------------

    async def create_session(self, req: CreateRequest) -> CreateResult:
        ws = await self.client.create_session(cwd=self.settings.cwd, model=req.model)
        native = ws.session_id
        if req.title:
            try:
                updated = await self.client.update_title(native, req.title, subject=self.subject(native))
                ws = updated if updated is not None else ws.model_copy(update={"title": req.title})
            except BackendError as exc:
                log.warning("factory: created %s but could not set its title: %s", self.subject(native), exc)
        if req.prompt is None:
            return CreateResult(session=self._record(ws))
        try:
            msg = await self._post(native, req.prompt)
        except SessionsError as exc:
            raise BackendError(
                f"created session {self.subject(native)!r} but sending the prompt failed: {exc}; "
                f"call send_message with that session_id to send it again",
                status=getattr(exc, "status", None),
            ) from None
        record = self._record(ws).model_copy(update={"message_count": ws.message_count + 1, "status": Status.RUNNING})
        return CreateResult(session=record, written=[msg])

    async def get_session(self, principal: str, native_id: str) -> SessionRecord:
        return self._record(await self.client.get_session(native_id, subject=self.subject(native_id)))

    async def list_sessions(self, q: SessionQuery) -> SessionPage:
        page = await self.client.list_sessions(limit=q.limit, cursor=q.cursor)
        records = [self._record(ws) for ws in page.sessions]
        if q.statuses:
            records = [r for r in records if r.status in q.statuses]
        if q.query:
            needle = q.query.casefold()
            records = [r for r in records if needle in (r.title or "").casefold() or needle in r.native_id.casefold()]
        records.sort(key=lambda r: r.updated_at, reverse=True)
        more = page.pagination.has_more and page.pagination.next_cursor
        return SessionPage(items=records, next_cursor=page.pagination.next_cursor if more else None)

    async def rename_session(self, principal: str, native_id: str, title: str) -> SessionRecord:
        ws = await self.client.update_title(native_id, title, subject=self.subject(native_id))
        if ws is None:
            ws = await self.client.get_session(native_id, subject=self.subject(native_id))
        return self._record(ws)

    async def interrupt_session(self, principal: str, native_id: str) -> SessionRecord:
        await self.client.interrupt(native_id, subject=self.subject(native_id))
        self._turns.pop(native_id, None)
        return self._record(await self.client.get_session(native_id, subject=self.subject(native_id)))

    async def delete_session(self, principal: str, native_id: str) -> None:
        await self.client.delete_session(native_id, subject=self.subject(native_id))
        self._forget(native_id)

    # --- messages -----------------------------------------------------------------------------

    async def _post(self, native_id: str, text: str) -> StoredMessage:
        posted = await self.client.post_message(native_id, text, subject=self.subject(native_id))
        turn = _Turn(message_id=posted.message_id, posted_at=time.monotonic())
        turn.seen_busy = wire_status(posted.status) is Status.RUNNING if posted.status else False
        self._turns[native_id] = turn
        return StoredMessage(
            id=posted.message_id,
            role="user",
            parts=[TextPart(text=text)],
            created_at=datetime.now(UTC),
            position=_position(0, posted.message_id),
        )

    async def send_message(
        self,
        principal: str,
        native_id: str,
        text: str,
        role: Role,
        *,
        dedupe_key: str | None = None,
        in_reply_to: str | None = None,
    ) -> StoredMessage:
        if role != "user":
            raise Unsupported(self.name, "take role='assistant' messages", "Factory's agent writes the replies")
        return await self._post(native_id, text)

    def _stored(self, index: int, m: WireMessage) -> StoredMessage:
        return StoredMessage(
            id=m.id,
            role=role(m.role),
            parts=content_to_parts(m.content),
            created_at=from_ms(m.created_at),
            position=_position(index, m.id),
        )

    async def _scan(self, native_id: str, start_after: int) -> AsyncGenerator[tuple[int, WireMessage], None]:
        """(index, message) from the cached page that holds index ``start_after + 1`` onwards."""
        cursors = self._cursors.setdefault(native_id, {0: None})
        base = max(c for c in cursors if c <= max(start_after, 0))
        cursor, count = cursors[base], base
        subject = self.subject(native_id)
        turn = self._turns.get(native_id)
        while True:
            page = await self.client.list_messages(native_id, limit=PAGE_MAX, cursor=cursor, subject=subject)
            for m in page.messages:
                count += 1
                if turn is not None:
                    if m.id == turn.message_id:
                        turn.index = count
                    elif turn.index is not None and count > turn.index and m.role != "user":
                        turn.replied = True
                yield count, m
            nxt = page.pagination.next_cursor
            if not (page.pagination.has_more and nxt and page.messages):
                return
            cursors[count] = cursor = nxt

    async def _after(
        self, native_id: str, position: str | None, limit: int, roles: Sequence[Role] | None
    ) -> tuple[list[StoredMessage], bool]:
        target: str | None = None
        starts = [0]
        if position is not None:
            hint, target = _parse_position(position)
            cached = self._cursors.get(native_id, {0: None})
            first = hint - 1 if hint > 0 else max(cached)  # unknown index: new messages are at the tail
            starts = [first, 0] if first > 0 else [0]
        for start in starts:
            found = target is None
            out: list[StoredMessage] = []
            async with aclosing(self._scan(native_id, start)) as items:
                async for index, m in items:
                    if not found:
                        found = m.id == target
                        continue
                    if roles and role(m.role) not in roles:
                        continue
                    out.append(self._stored(index, m))
                    if len(out) > limit:
                        break
            if found:
                return out[:limit], len(out) > limit
        raise BadCursor("the message it points to is no longer in this Factory session")

    async def list_messages(
        self,
        principal: str,
        native_id: str,
        *,
        after: str | None,
        limit: int,
        roles: Sequence[Role] | None = None,
    ) -> MessagePage:
        # the status is read first: when it says idle, every reply of the turn is already listed
        ws = await self.client.get_session(native_id, subject=self.subject(native_id))
        items, more = await self._after(native_id, after, limit, roles)
        return MessagePage(items=items, has_more=more, status=self._status(native_id, ws.status))

    # --- waiting ------------------------------------------------------------------------------

    def watch(self, principal: str, native_id: str, *, progress: ProgressFn | None = None) -> Any:
        return _PollWatch(self, native_id, progress)

    # --- doctor -------------------------------------------------------------------------------

    async def diagnose(self) -> list[Check]:
        base = self.client.base_url
        if not self.client.has_key:
            return [
                Check(
                    "factory: API key",
                    "fail",
                    "FACTORY_API_KEY is not set",
                    "create a key at https://app.factory.ai/settings/api-keys and export FACTORY_API_KEY=fk-...",
                )
            ]
        quick = RetryPolicy(attempts=2, budget_s=10.0)
        try:
            with anyio.fail_after(15):
                await self.client.api.json("GET", "/api/v0/sessions", params={"limit": "1"}, policy=quick)
        except AuthError as exc:
            return [
                Check("factory: API key", "fail", f"FACTORY_API_KEY is set but was refused: {exc}",
                      "create a new key at https://app.factory.ai/settings/api-keys and set FACTORY_API_KEY"),
                Check("factory: API", "ok", f"{base} answers"),
            ]  # fmt: skip
        except (Unavailable, TimeoutError, SessionsError, ConfigError) as exc:
            silent = isinstance(exc, Unavailable | TimeoutError)
            found, advice = (
                (f"is not reachable: {exc}", "and the network")
                if silent
                else (f"answered unexpectedly: {exc}", "points at the Factory API")
            )
            return [
                Check("factory: API key", "warn",
                      "FACTORY_API_KEY is set (not verified" + (": the API did not answer)" if silent else ")")),
                Check("factory: API", "fail", f"{base} {found}", f"check SESSIONS_MCP_FACTORY__BASE_URL {advice}"),
            ]  # fmt: skip
        return [
            Check("factory: API key", "ok", "FACTORY_API_KEY is set and accepted"),
            Check("factory: API", "ok", f"{base} answers the Sessions API v0"),
        ]


class _PollWatch(Watch):
    """Polls the session while a caller waits; backoff resets whenever something changed."""

    def __init__(self, backend: FactoryBackend, native_id: str, progress: ProgressFn | None) -> None:
        self.backend = backend
        self.native_id = native_id
        self.progress = progress
        self.interval = backend.POLL_INITIAL_S
        self.fingerprint: tuple[Any, ...] | None = None
        self.reported = 0
        """Messages (by index) already looked at for progress."""

    def _fp(self, ws: WireSession) -> tuple[Any, ...]:
        return (self.backend._status(self.native_id, ws.status), ws.message_count, ws.updated_at)  # pyright: ignore[reportPrivateUsage]

    async def __aenter__(self) -> _PollWatch:
        try:
            ws = await self.backend.client.get_session(self.native_id, subject=FactoryBackend.subject(self.native_id))
            self.fingerprint = self._fp(ws)
            self.reported = ws.message_count
        except SessionsError:
            self.fingerprint = None  # the first poll then reports a change; the caller re-reads
        return self

    async def _report(self, ws: WireSession) -> None:
        if self.progress is None or ws.message_count <= self.reported:
            return
        start = self.reported
        async with aclosing(self.backend._scan(self.native_id, start)) as items:  # pyright: ignore[reportPrivateUsage]
            async for index, m in items:
                if index <= start:
                    continue
                self.reported = max(self.reported, index)
                if role(m.role) == "assistant":
                    text = parts_text(content_to_parts(m.content))
                    if text:
                        await self.progress(text)

    async def next(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(timeout, 0)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await anyio.sleep(min(self.interval, remaining))
            self.interval = min(self.interval * self.backend.POLL_GROWTH, self.backend.POLL_MAX_S)
            try:
                ws = await self.backend.client.get_session(
                    self.native_id, subject=FactoryBackend.subject(self.native_id)
                )
            except SessionsError:
                return True  # let the caller re-read: it reports the error or recovers
            fp = self._fp(ws)
            if fp == self.fingerprint:
                continue
            self.fingerprint = fp
            self.interval = self.backend.POLL_INITIAL_S
            try:
                await self._report(ws)
            except SessionsError:
                log.debug("factory: could not read new messages for progress", exc_info=True)
            return True
