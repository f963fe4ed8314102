"""LocalBackend: sessions in the embedded store.

Status rules (one place):

- create without a prompt -> ``idle``.
- a user message -> ``awaiting_reply`` in the mailbox (no agent attached), ``running`` when an
  agent answers; the agent's turn ends ``idle`` (or ``failed`` with ``error``).
- an assistant message (the mailbox answer from another client) -> ``idle``.
- interrupt: stops a running agent turn (``idle``); in the mailbox it withdraws the request
  for a reply (``awaiting_reply`` -> ``idle``), so the session leaves the inbox.
- the agent asks for a permission or a question -> ``needs_input`` with ``pending``; a user
  message then answers it (an option id or label for a permission; anything else is an error
  listing the options) and the turn goes on (``running``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from anyio.abc import TaskGroup

from ...diagnostics import Check
from ...errors import InvalidArgument, UnknownSession, Unsupported, quote
from ...ids import count_position
from ...models import Capabilities, MessagePage, Pending, Role, SessionPage, SessionRecord, Status, StoredMessage
from ...store.base import Change, SessionRow, Store, from_ms
from ...store.feed import ChangeFeed
from ..base import ProgressFn, SessionBackend, Watch
from ..requests import CreateRequest, CreateResult, MessageQuery, SendRequest, SessionQuery
from ..stored import stored_message, stored_sessions_page

if TYPE_CHECKING:
    from ...mirror import Mirror
    from ...settings import AgentSettings, FactoryAppSettings, LocalSettings
    from .agents.turnio import Asker
    from .registry import AgentSpec

log = logging.getLogger(__name__)

MAILBOX = "mailbox"


class AgentRunner(Protocol):
    """Runs an agent for each user turn of the sessions it is attached to."""

    name: str

    async def start(self, tg: TaskGroup) -> None:
        """Recover turns left running by a dead process; be ready to run turns in ``tg``."""
        ...

    def begin_turn(self, owner: str, session_id: str) -> None:
        """Run the agent for the newest user message in the background."""
        ...

    async def interrupt(self, owner: str, session_id: str) -> bool:
        """Stop the running turn of this session; False when none runs here."""
        ...

    async def aclose(self) -> None:
        """Stop every turn this process runs."""
        ...


def _record(row: SessionRow) -> SessionRecord:
    return SessionRecord(
        native_id=row.id,
        title=row.title,
        status=row.status,
        error=row.error,
        created_at=from_ms(row.created_at),
        updated_at=from_ms(row.updated_at),
        message_count=row.message_count,
        model=row.model,
        agent=row.agent or MAILBOX,
        head=str(row.last_seq),
    )


def _position(after: str | None) -> int:
    seq = count_position(after)
    if seq is None:
        raise InvalidArgument("bad cursor: pass a cursor returned by this server")
    return seq


class _FeedWatch(Watch):
    def __init__(self, feed: ChangeFeed, session_id: str) -> None:
        self.feed = feed
        self.session_id = session_id
        self.ticket = feed.ticket(session_id)

    async def next(self, timeout: float) -> bool:
        fired = await self.ticket.wait(timeout)
        if fired:
            self.ticket = self.feed.ticket(self.session_id)
        return fired


class LocalBackend(SessionBackend):
    """Sessions stored in SQLite (or PostgreSQL), owned by the principal that created them."""

    name = "local"
    capabilities = Capabilities(
        rename=True, delete=True, interrupt=True, assistant_messages=True, streaming=True,
        system_prompt=True, model_choice=True,
    )  # fmt: skip

    def __init__(
        self,
        store: Store,
        settings: LocalSettings,
        *,
        factory_app: FactoryAppSettings | None = None,
        agents: dict[str, AgentSettings] | None = None,
    ) -> None:
        from .registry import resolve_agents

        self.store = store
        self.settings = settings
        self.factory_app = factory_app
        self.agent_settings = dict(agents or {})
        self.specs: dict[str, AgentSpec] = resolve_agents(settings, self.agent_settings)
        self.mirror: Mirror | None = None
        self.feed = ChangeFeed(store)
        self.runner: AgentRunner | None = None
        self.default_agent = settings.agent if settings.agent not in ("none", MAILBOX) else None
        self._streams: dict[str, list[ProgressFn]] = {}
        self._askers: dict[str, list[Asker]] = {}
        self._tg: TaskGroup | None = None

    async def start(self, tg: TaskGroup) -> None:
        try:
            await self.store.open()
        except Exception as exc:
            # keep serving: every call reopens and reports the problem to the caller
            log.error("local store unavailable: %s", exc)
        await self.feed.start(tg)
        if self.settings.mirror == "factory-app" and self.factory_app is not None:
            from ...mirror import start_mirror

            self.mirror = await start_mirror(self.store, self.feed, self.factory_app, tg)
        self._tg = tg
        if self.default_agent or self.agent_settings or any(s.source == "legacy" for s in self.specs.values()):
            await self._start_runner()

    async def _start_runner(self) -> AgentRunner | None:
        """Start the agent runner (at start when agents are configured, else at the first agent session)."""
        if self.runner is None and self._tg is not None:
            from .agents import create_runner

            runner: AgentRunner = create_runner(self.settings, self, self.agent_settings)
            self.runner = runner
            await runner.start(self._tg)
        return self.runner

    def agent_infos(self) -> list[dict[str, Any]]:
        """The agents for ``sessions://index``: name, kind, available, default, detail."""
        default = self.default_agent or "none"
        out: list[dict[str, Any]] = [
            {"name": "none", "kind": "mailbox", "available": True, "default": default == "none",
             "detail": "no agent: another client answers with send_message(role='assistant')"}
        ]  # fmt: skip
        for spec in self.specs.values():
            out.append({"name": spec.name, "kind": spec.kind, "available": spec.available,
                        "default": spec.name == default, "detail": spec.detail})  # fmt: skip
        return out

    async def _rec(self, row: SessionRow) -> SessionRecord:
        rec = _record(row)
        if row.status is Status.NEEDS_INPUT:
            pending = await self.pending(row.id)
            if pending is not None:
                rec.pending = pending
        return rec

    async def pending(self, native_id: str) -> Pending | None:
        """What the session's agent waits for, if anything."""
        extra = await self.store.agent_session(native_id)
        return Pending.model_validate(extra.pending) if extra is not None and extra.pending else None

    @asynccontextmanager
    async def asking(self, native_id: str, asker: Asker) -> AsyncGenerator[None, None]:
        """While inside, ``asker`` (a waiting client that can elicit) is asked first for input."""
        self._askers.setdefault(native_id, []).append(asker)
        try:
            yield
        finally:
            fns = self._askers.get(native_id, [])
            if asker in fns:
                fns.remove(asker)
            if not fns:
                self._askers.pop(native_id, None)

    async def elicit(self, native_id: str, pending: Pending) -> str | None:
        """Ask a waiting client's person (elicitation); None when nobody could or would answer."""
        for asker in list(self._askers.get(native_id, ())):
            try:
                answer = await asker(pending)
            except Exception:
                log.debug("elicitation failed", exc_info=True)
                continue
            if answer is not None:
                return answer
        return None

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.aclose()
        await self.store.close()

    async def diagnose(self) -> list[Check]:
        from .diagnose import agent_checks

        return agent_checks(self)

    def agent_attached(self, session: SessionRecord) -> bool:
        return session.agent not in (None, MAILBOX)

    async def publish(self, session_id: str, owner: str, kind: Any) -> None:
        """Announce a write this process made (wakes waiters and subscribers at once)."""
        await self.feed.publish(Change(0, session_id, owner, kind, self.store.writer_id))

    # --- sessions ---------------------------------------------------------------------------

    async def create_session(self, req: CreateRequest) -> CreateResult:
        agent = req.agent or self.default_agent
        if agent in ("none", MAILBOX):
            agent = None
        elif agent is not None:
            spec = self.specs.get(agent)
            if spec is None and agent != self.default_agent:
                choices = ["none", *(n for n, s in self.specs.items() if s.available)]
                raise InvalidArgument(
                    f"agent {quote(agent)} is not configured on this server (SESSIONS_MCP_LOCAL__AGENT="
                    f"{self.settings.agent}); use one of: {', '.join(choices)}, or leave agent empty"
                )
            if spec is not None and not spec.available and req.agent:
                raise InvalidArgument(f"agent {agent!r} is not available here: {spec.detail}")
        workdir: str | None = None
        if req.workdir is not None:
            from .registry import agent_roots, check_workdir

            if agent is None:
                raise InvalidArgument("workdir needs an agent: pick one with agent=..., or leave workdir empty")
            try:
                workdir = check_workdir(req.workdir, agent_roots(self.settings))
            except ValueError as exc:
                raise InvalidArgument(str(exc)) from None
        first = None
        status = Status.IDLE
        if req.prompt is not None:
            first = ("user", [{"type": "text", "text": req.prompt}], req.prompt)
            status = Status.RUNNING if agent else Status.AWAITING_REPLY
        row, msgs = await self.store.create_session(
            owner=req.principal,
            title=req.title,
            model=req.model,
            system=req.system,
            agent=agent,
            status=status,
            first_message=first,  # pyright: ignore[reportArgumentType]
            dedupe_key=req.dedupe_key,
        )
        if workdir is not None:
            await self.store.agent_session_put(row.id, workdir=workdir)
        await self.publish(row.id, row.owner, "created")
        if agent and req.prompt is not None and row.status is Status.RUNNING:
            runner = await self._start_runner()
            if runner is not None:
                runner.begin_turn(row.owner, row.id)
        return CreateResult(session=_record(row), written=[stored_message(m) for m in msgs])

    async def _row(self, principal: str, native_id: str) -> SessionRow:
        row = await self.store.get_session(principal, native_id)
        if row is None:
            raise UnknownSession(f"local:{native_id}")
        return row

    async def get_session(self, principal: str, native_id: str) -> SessionRecord:
        return await self._rec(await self._row(principal, native_id))

    async def list_sessions(self, q: SessionQuery) -> SessionPage:
        return await stored_sessions_page(self.store, q.principal, q, self._rec)

    async def rename_session(self, principal: str, native_id: str, title: str) -> SessionRecord:
        row = await self.store.update_session(principal, native_id, title=title)
        if row is None:
            raise UnknownSession(f"local:{native_id}")
        await self.publish(row.id, row.owner, "renamed")
        return _record(row)

    async def _stop_turn(self, principal: str, native_id: str) -> SessionRow:
        """Stop the turn an agent of this process runs in the session, if any; the row afterwards."""
        row = await self._row(principal, native_id)
        if self.runner is not None and row.status in (Status.RUNNING, Status.NEEDS_INPUT):
            await self.runner.interrupt(principal, native_id)
            row = await self._row(principal, native_id)
        return row

    async def interrupt_session(self, principal: str, native_id: str) -> SessionRecord:
        row = await self._stop_turn(principal, native_id)
        if row.status in (Status.RUNNING, Status.AWAITING_REPLY, Status.NEEDS_INPUT):
            updated = await self.store.update_session(principal, native_id, status=Status.IDLE, clear_error=True)
            if updated is None:
                raise UnknownSession(f"local:{native_id}")
            row = updated
            await self.publish(row.id, row.owner, "status")
        return _record(row)

    async def delete_session(self, principal: str, native_id: str) -> None:
        await self._stop_turn(principal, native_id)
        if not await self.store.delete_session(principal, native_id):
            raise UnknownSession(f"local:{native_id}")
        forget = getattr(self.runner, "forget", None)
        if forget is not None:
            await forget(native_id)  # stop an agent process kept for this session's next turn
        await self.publish(native_id, principal, "deleted")

    # --- messages ---------------------------------------------------------------------------

    async def send_message(self, req: SendRequest) -> StoredMessage:
        row = await self._row(req.principal, req.native_id)
        attached = row.agent not in (None, MAILBOX)
        if req.role == "assistant":
            if attached:
                raise Unsupported(
                    "local",
                    "take role='assistant' messages in this session",
                    f"its replies come from the {row.agent!r} agent; send role='user' instead",
                )
            status = Status.IDLE
        elif req.role == "user":
            status = Status.RUNNING if attached else Status.AWAITING_REPLY
        else:
            raise InvalidArgument("role must be 'user' or 'assistant'")
        parts: list[dict[str, Any]] = [{"type": "text", "text": req.text}]
        answers = False
        if req.role == "user" and row.status is Status.NEEDS_INPUT:
            pending = await self.pending(req.native_id)
            if pending is not None:
                parts = self._answer(req.native_id, pending, req.text)
                answers = True
        result = await self.store.append_message(
            req.principal,
            req.native_id,
            role=req.role,
            parts=parts,
            text=req.text,
            new_status=status,
            dedupe_key=req.dedupe_key,
            unanswered_after_seq=(
                _position(req.in_reply_to) if req.role == "assistant" and req.in_reply_to is not None else None
            ),
        )
        if result is None:
            raise UnknownSession(f"local:{req.native_id}")
        session, msg = result
        await self.publish(req.native_id, req.principal, "message")
        if attached and req.role == "user" and not answers:
            runner = await self._start_runner()
            if runner is not None:
                runner.begin_turn(req.principal, req.native_id)
        del session
        return stored_message(msg)

    def _answer(self, native_id: str, pending: Pending, text: str) -> list[dict[str, Any]]:
        from .agents.turnio import answer_parts, match_option

        if pending.kind == "question":
            return answer_parts(text, pending.id, text)
        chosen = match_option(pending, text)
        if chosen is None:
            listed = "; ".join(f"{o.id!r} ({o.label}, {o.kind})" for o in pending.options or [])
            raise InvalidArgument(
                f"local:{native_id} waits for an answer to: {pending.text}\nanswer with one of these option ids "
                f"or labels: {listed}. Nothing was answered"
            )
        return answer_parts(text, pending.id, chosen)

    async def append_agent_message(
        self,
        owner: str,
        native_id: str,
        *,
        parts: list[dict[str, Any]],
        text: str,
        status: Status | None,
        error: str | None = None,
        role: Role = "assistant",
    ) -> StoredMessage | None:
        """Write what an agent produced (used by agent runners); None when the session is gone."""
        result = await self.store.append_message(
            owner, native_id, role=role, parts=parts, text=text, new_status=status, error=error
        )
        if result is None:
            return None
        await self.publish(native_id, owner, "message")
        return stored_message(result[1])

    async def set_status(self, owner: str, native_id: str, status: Status, error: str | None = None) -> None:
        """Set a session's status (used by agent runners)."""
        row = await self.store.update_session(
            owner, native_id, status=status, error=error, clear_error=status is not Status.FAILED
        )
        if row is not None:
            await self.publish(native_id, owner, "status")

    async def list_messages(self, q: MessageQuery) -> MessagePage:
        result = await self.store.list_messages(
            q.principal, q.native_id, after_seq=_position(q.after), limit=q.limit, roles=q.roles
        )
        if result is None:
            raise UnknownSession(f"local:{q.native_id}")
        row, msgs, more = result
        return MessagePage(items=[stored_message(m) for m in msgs], has_more=more, status=row.status)

    # --- waiting ----------------------------------------------------------------------------

    @asynccontextmanager
    async def _watch(self, native_id: str, progress: ProgressFn | None) -> AsyncGenerator[Watch, None]:
        if progress is not None:
            self._streams.setdefault(native_id, []).append(progress)
        try:
            async with self.feed.interested():
                yield _FeedWatch(self.feed, native_id)
        finally:
            if progress is not None:
                fns = self._streams.get(native_id, [])
                if progress in fns:
                    fns.remove(progress)
                if not fns:
                    self._streams.pop(native_id, None)

    def watch(self, principal: str, native_id: str, *, progress: ProgressFn | None = None) -> Any:
        return self._watch(native_id, progress)

    async def stream_delta(self, native_id: str, text: str) -> None:
        """Forward reply text as an agent produces it to everyone waiting on the session here."""
        for fn in list(self._streams.get(native_id, ())):
            try:
                await fn(text)
            except Exception:
                log.debug("progress callback failed", exc_info=True)
