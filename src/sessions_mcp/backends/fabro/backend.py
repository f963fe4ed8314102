"""FabroBackend: sessions on a Fabro server (the ``Sessions`` tag of ``fabro-api.yaml``).

What Fabro lacks and how it is papered over:

- **No status field.** Derived: ``failed`` after an ``error`` event until the next message (or a
  new turn); ``running`` while a reply is known to be in flight (posted, or deltas seen and no
  ``done``) or when the last turn is the user's; ``idle`` otherwise.
- **No message ids, no message list.** Turns are embedded in the session; see :mod:`.mapping`.
- **The first prompt travels in create.** ``create_session`` without a prompt makes a *draft*
  kept in the shared store (``fabro:draft-…``, idle, with the title, model and system prompt
  given); its first message creates the Fabro session, and the draft's handle then keeps
  working as an alias of it.
- **No delete, rename, interrupt.** Capabilities say so; the service answers ``Unsupported``.
- **Live events without replay.** See :mod:`.events`: ``send_message`` opens the stream before
  posting, and the service's ``watch()`` adopts it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from ...diagnostics import Check
from ...errors import (
    BadCursor,
    ConfigError,
    InvalidArgument,
    ProtocolError,
    SessionsError,
    UnknownSession,
    Unsupported,
)
from ...models import (
    Capabilities,
    MessagePage,
    SessionPage,
    SessionRecord,
    Status,
    StoredMessage,
    TextPart,
)
from ...store.base import SessionRow, Store, from_ms
from ..base import ProgressFn, SessionBackend, Watch
from ..requests import CreateRequest, CreateResult, MessageQuery, SendRequest, SessionQuery
from ..stored import BAD_CURSOR, parse_row_cursor, row_cursor
from .client import FabroClient
from .events import LiveStreams, StreamWatch, attach_listener
from .mapping import parse_position, turns_to_messages
from .wire import CreateSessionRequest, SessionDetail, UserTurn

if TYPE_CHECKING:
    from ...settings import FabroSettings

log = logging.getLogger(__name__)

NAME = "fabro"
DRAFT_PREFIX = "draft-"
CONNECT_WAIT_S = 5.0
"""How long send_message waits for the event stream to open before posting anyway."""
DETAIL_CONCURRENCY = 8


def is_fabro_id(native_id: str) -> bool:
    """Whether ``native_id`` is a Fabro session id (a UUID)."""
    try:
        uuid.UUID(native_id)
    except ValueError:
        return False
    return len(native_id) == 36


class FabroBackend(SessionBackend):
    """Sessions on a Fabro server; see the module docstring."""

    name = NAME
    capabilities = Capabilities(
        rename=False, delete=False, interrupt=False, assistant_messages=False, streaming=True,
        system_prompt=True, model_choice=True,
    )  # fmt: skip

    def __init__(
        self,
        settings: FabroSettings,
        store: Store,
        *,
        client: FabroClient | None = None,
        config_error: ConfigError | None = None,
        linger_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.config_error = config_error
        self.live = LiveStreams(client, linger_s=linger_s) if client is not None else None
        self._draft_targets: dict[str, str] = {}
        self._draft_locks: dict[str, anyio.Lock] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        if self.live is not None:
            self.live.bind(tg)
        if self.config_error is not None:
            log.error("fabro backend misconfigured: %s", self.config_error)

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def _api(self) -> tuple[FabroClient, LiveStreams]:
        if self.client is None or self.live is None:
            raise self.config_error or ConfigError("SESSIONS_MCP_FABRO__BASE_URL is empty; set it to the Fabro server")
        return self.client, self.live

    @staticmethod
    def _handle(native_id: str) -> str:
        return f"{NAME}:{native_id}"

    # --- drafts (sessions created without a prompt) ---------------------------------------------

    @staticmethod
    def _owner(principal: str) -> str:
        return f"{NAME}\x1f{principal}"

    async def _draft(self, principal: str, native_id: str) -> SessionRow:
        row = await self.store.get_session(self._owner(principal), native_id.removeprefix(DRAFT_PREFIX))
        if row is None:
            raise UnknownSession(self._handle(native_id))
        return row

    async def _draft_target(self, principal: str, native_id: str) -> str | None:
        """The Fabro session a draft became, if it did."""
        if native_id in self._draft_targets:
            return self._draft_targets[native_id]
        page = await self.store.list_messages(
            self._owner(principal), native_id.removeprefix(DRAFT_PREFIX), after_seq=0, limit=1
        )
        if page is None:
            raise UnknownSession(self._handle(native_id))
        _, msgs, _ = page
        for m in msgs:
            for p in m.parts:
                target = p.get("data", {}).get("fabro_id") if p.get("type") == "raw" else None
                if isinstance(target, str) and is_fabro_id(target):
                    self._draft_targets[native_id] = target
                    return target
        return None

    async def _resolve(self, principal: str, native_id: str) -> tuple[str | None, SessionRow | None]:
        """``(fabro id, draft row)``: a Fabro id as is, a draft to its target (None while a draft)."""
        if is_fabro_id(native_id):
            return native_id, None
        if not native_id.startswith(DRAFT_PREFIX):
            raise UnknownSession(self._handle(native_id))
        row = await self._draft(principal, native_id)
        return await self._draft_target(principal, native_id), row

    @staticmethod
    def _draft_record(native_id: str, row: SessionRow) -> SessionRecord:
        return SessionRecord(
            native_id=native_id, title=row.title, status=Status.IDLE, created_at=from_ms(row.created_at),
            updated_at=from_ms(row.updated_at), message_count=0, model=row.model, agent=NAME, head="0",
        )  # fmt: skip

    # --- reading -------------------------------------------------------------------------------

    async def _detail(self, fabro_id: str, native_id: str) -> SessionDetail:
        client, _ = self._api()
        return await client.retrieve_session(fabro_id, subject=self._handle(native_id))

    def _status(self, detail: SessionDetail) -> tuple[Status, str | None]:
        _, live = self._api()
        n = len(detail.turns)
        failure = live.failures.get(detail.id)
        if failure is not None:
            if failure.turns is None:
                failure.turns = n
            if failure.turns == n:
                return Status.FAILED, failure.message
            live.failures.pop(detail.id, None)
        stream = live.streams.get(detail.id)
        if stream is not None and stream.generating:
            return Status.RUNNING, None
        if detail.turns and isinstance(detail.turns[-1], UserTurn):
            return Status.RUNNING, None
        return Status.IDLE, None

    def _record(
        self, native_id: str, detail: SessionDetail, messages: list[StoredMessage], row: SessionRow | None = None
    ) -> SessionRecord:
        status, error = self._status(detail)
        return SessionRecord(
            native_id=native_id, title=(row.title if row is not None and row.title else detail.title),
            status=status, error=error, created_at=detail.created_at, updated_at=detail.updated_at,
            message_count=len(messages), model=detail.model.id, agent=NAME, head=str(len(messages)),
        )  # fmt: skip

    async def get_session(self, principal: str, native_id: str) -> SessionRecord:
        fabro_id, row = await self._resolve(principal, native_id)
        if fabro_id is None:
            assert row is not None
            return self._draft_record(native_id, row)
        detail = await self._detail(fabro_id, native_id)
        return self._record(native_id, detail, turns_to_messages(fabro_id, detail.turns, detail.created_at), row)

    async def list_messages(self, q: MessageQuery) -> MessagePage:
        start = parse_position(q.after)
        fabro_id, _ = await self._resolve(q.principal, q.native_id)
        if fabro_id is None:
            if start:
                raise BadCursor("this session has no messages yet")
            return MessagePage(items=[], has_more=False, status=Status.IDLE)
        detail = await self._detail(fabro_id, q.native_id)
        messages = turns_to_messages(fabro_id, detail.turns, detail.created_at)
        rest = [m for m in messages[start:] if q.roles is None or m.role in q.roles]
        status, _ = self._status(detail)
        return MessagePage(items=rest[: q.limit], has_more=len(rest) > q.limit, status=status)

    async def list_sessions(self, q: SessionQuery) -> SessionPage:
        items: list[SessionRecord] = []
        phase, _, where = (q.cursor or "d:").partition(":")
        if phase not in ("d", "r"):
            raise InvalidArgument(BAD_CURSOR)
        if phase == "d":
            after = parse_row_cursor(where) if where else None
            rows = await self.store.list_sessions(
                self._owner(q.principal), statuses=None, query=q.query, after=after, limit=q.limit + 1
            )
            more = len(rows) > q.limit
            rows = rows[: q.limit]
            for r in rows:
                if r.message_count == 0 and (q.statuses is None or Status.IDLE in q.statuses):
                    items.append(self._draft_record(DRAFT_PREFIX + r.id, r))
            if more:
                return SessionPage(items=items, next_cursor=f"d:{row_cursor(rows[-1])}")
            offset = 0
        else:
            try:
                offset = int(where)
            except ValueError:
                raise InvalidArgument(BAD_CURSOR) from None
        room = q.limit - len(items)
        if room <= 0:
            return SessionPage(items=items, next_cursor=f"r:{offset}")
        if self.client is None and items:
            return SessionPage(items=items)  # drafts still list while Fabro is not configured
        client, _ = self._api()
        page = await client.list_sessions(limit=min(room, 100), offset=offset)
        wanted = [
            s for s in page.data
            if not q.query or q.query.lower() in f"{s.title}\n{s.last_message_preview}".lower()
        ]  # fmt: skip
        records = await self._records_for(wanted)
        items.extend(r for r in records if q.statuses is None or r.status in q.statuses)
        next_cursor = f"r:{offset + len(page.data)}" if page.meta.has_more and page.data else None
        return SessionPage(items=items, next_cursor=next_cursor)

    async def _records_for(self, listed: Sequence[Any]) -> list[SessionRecord]:
        """Full records (status needs the turns) for listed sessions, a few requests at a time."""
        out: dict[str, SessionRecord] = {}
        limiter = anyio.CapacityLimiter(DETAIL_CONCURRENCY)

        async def one(item: Any) -> None:
            async with limiter:
                try:
                    detail = await self._detail(item.id, item.id)
                except UnknownSession:
                    return  # gone between the list and the read
                out[item.id] = self._record(
                    item.id, detail, turns_to_messages(item.id, detail.turns, detail.created_at)
                )

        async with anyio.create_task_group() as tg:
            for item in listed:
                tg.start_soon(one, item)
        return [out[i.id] for i in listed if i.id in out]

    # --- writing -------------------------------------------------------------------------------

    async def create_session(self, req: CreateRequest) -> CreateResult:
        if req.prompt is None:
            row, _ = await self.store.create_session(
                owner=self._owner(req.principal), title=req.title, model=req.model, system=req.system,
                agent=NAME, status=Status.IDLE, dedupe_key=req.dedupe_key,
            )  # fmt: skip
            return CreateResult(session=self._draft_record(DRAFT_PREFIX + row.id, row))
        fabro_id, first = await self._create_remote(req.prompt, req.model, req.system)
        rec = SessionRecord(
            native_id=fabro_id, title=first.title, status=Status.RUNNING, created_at=first.created_at,
            updated_at=first.updated_at, message_count=1, model=first.model.id, agent=NAME, head="1",
        )  # fmt: skip
        msg = StoredMessage(
            id=f"{fabro_id}:0", role="user", parts=[TextPart(text=req.prompt)], created_at=first.created_at,
            position="1",
        )  # fmt: skip
        return CreateResult(session=rec, written=[msg])

    async def _create_remote(self, prompt: str, model: str | None, system: str | None) -> tuple[str, Any]:
        client, live = self._api()
        created = await client.create_session(CreateSessionRequest(content=prompt, model=model, system=system))
        if not is_fabro_id(created.id):
            raise ProtocolError(f"Fabro answered createSession with an id that is not a UUID ({created.id[:60]!r})")
        if live.available:
            # generation started with the create: subscribe at once (the linger hands it to the waiter)
            async with live.hold(created.id, self._handle(created.id)) as stream:
                stream.mark_posted()
                await stream.wait_connected(CONNECT_WAIT_S)
        return created.id, created

    async def send_message(self, req: SendRequest) -> StoredMessage:
        if req.role != "user":
            raise Unsupported(NAME, "take role='assistant' messages", "Fabro's agent writes the replies")
        principal, native_id, text = req.principal, req.native_id, req.text
        fabro_id, row = await self._resolve(principal, native_id)
        if fabro_id is None:
            assert row is not None
            return await self._materialise(principal, native_id, row, text)
        client, live = self._api()
        subject = self._handle(native_id)
        live.note_posted(fabro_id)
        if live.available:
            async with live.hold(fabro_id, subject) as stream:
                await stream.wait_connected(CONNECT_WAIT_S)
                stream.mark_posted()
                try:
                    await client.send_message(fabro_id, text, subject=subject)
                except BaseException:
                    stream.generating = None
                    raise
        else:
            await client.send_message(fabro_id, text, subject=subject)
        detail = await self._detail(fabro_id, native_id)
        return self._sent_message(fabro_id, detail, text)

    @staticmethod
    def _sent_message(fabro_id: str, detail: SessionDetail, text: str) -> StoredMessage:
        messages = turns_to_messages(fabro_id, detail.turns, detail.created_at)
        for m in reversed(messages):
            if m.role == "user" and m.text == text:
                return m
        # Fabro appends the user turn before answering 202; this is only for a server that does not
        raise ProtocolError(
            "Fabro accepted the message but it is not in the session's turns; call list_messages to check"
        )

    async def _materialise(self, principal: str, native_id: str, row: SessionRow, text: str) -> StoredMessage:
        lock = self._draft_locks.setdefault(native_id, anyio.Lock())
        async with lock:
            target = await self._draft_target(principal, native_id)
            if target is not None:  # another call got here first
                return await self.send_message(SendRequest(principal, native_id, text, "user"))
            fabro_id, created = await self._create_remote(text, row.model, row.system)
            appended = await self.store.append_message(
                self._owner(principal), row.id, role="system",
                parts=[{"type": "raw", "backend_type": "fabro.session", "data": {"fabro_id": fabro_id}}],
                text="", new_status=Status.IDLE,
            )  # fmt: skip
            if appended is None:
                raise UnknownSession(self._handle(native_id))
            self._draft_targets[native_id] = fabro_id
        return StoredMessage(
            id=f"{fabro_id}:0", role="user", parts=[TextPart(text=text)], created_at=created.created_at, position="1"
        )

    async def rename_session(self, principal: str, native_id: str, title: str) -> SessionRecord:
        raise Unsupported(NAME, "rename sessions")

    async def interrupt_session(self, principal: str, native_id: str) -> SessionRecord:
        raise Unsupported(NAME, "interrupt a running turn", "wait for it, or send a new message")

    async def delete_session(self, principal: str, native_id: str) -> None:
        raise Unsupported(NAME, "delete sessions")

    # --- waiting -------------------------------------------------------------------------------

    @asynccontextmanager
    async def _watch(self, principal: str, native_id: str, progress: ProgressFn | None) -> AsyncGenerator[Watch, None]:
        fabro_id, _ = await self._resolve(principal, native_id)
        live = self.live
        if fabro_id is None or live is None or not live.available:
            async with super().watch(principal, native_id, progress=progress) as w:
                yield w
            return
        async with live.hold(fabro_id, self._handle(native_id)) as stream:
            await stream.wait_connected(CONNECT_WAIT_S)
            if progress is not None and stream.deltas:
                await progress("".join(stream.deltas))  # what streamed before this waiter arrived
            detach = attach_listener(stream, progress)
            try:
                yield StreamWatch(stream)
            finally:
                detach()

    def watch(self, principal: str, native_id: str, *, progress: ProgressFn | None = None) -> Any:
        return self._watch(principal, native_id, progress)

    # --- doctor --------------------------------------------------------------------------------

    async def diagnose(self) -> list[Check]:
        s = self.settings
        checks: list[Check] = []
        if self.config_error is not None or self.client is None:
            err = self.config_error or ConfigError("SESSIONS_MCP_FABRO__BASE_URL is empty")
            return [Check("fabro: configuration", "fail", str(err), "set the SESSIONS_MCP_FABRO__* settings")]
        prefix = self.client.prefix or "(none: March 2026 build)"
        checks.append(Check("fabro: configuration", "ok", f"{s.base_url} with path prefix {prefix}"))
        if s.token is not None:
            checks.append(Check("fabro: credentials", "ok", "static bearer token configured"))
        elif s.jwt_private_key is not None:
            checks.append(
                Check("fabro: credentials", "ok", f"Ed25519 key loaded; JWT sub {s.jwt_subject}, ttl {s.jwt_ttl_s}s")
            )
        elif s.client_cert:
            checks.append(Check("fabro: credentials", "ok", "mTLS client certificate only"))
        else:
            checks.append(
                Check(
                    "fabro: credentials", "warn", "no token, JWT key or client certificate configured",
                    "set SESSIONS_MCP_FABRO__TOKEN or SESSIONS_MCP_FABRO__JWT_PRIVATE_KEY (+ __JWT_SUBJECT), "
                    "unless the server runs with FABRO_LOCAL_NO_AUTH",
                )
            )  # fmt: skip
        try:
            with anyio.fail_after(s.timeout_s + 5):
                await self.client.list_sessions(limit=1, offset=0)
            checks.append(Check("fabro: sessions API", "ok", "listSessions answered"))
        except SessionsError as exc:
            checks.append(Check("fabro: sessions API", "fail", str(exc), "see the message; check base URL and prefix"))
        except TimeoutError:
            checks.append(
                Check("fabro: sessions API", "fail", f"no answer within {s.timeout_s + 5:g}s", "check the base URL")
            )
        return checks
