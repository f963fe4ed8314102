"""A2ABackend: sessions with remote Agent2Agent agents.

A session is an A2A context. This server keeps the session (title, status, transcript) in the
shared store under its own owner namespace, and the remote ids each message belongs to in the
message itself (see :mod:`.turns`), so a handle keeps working after a restart and from any
process on the same store. Rename and delete act on this server's record only: A2A has no way
to rename or delete a context.

Sending while the agent still works on the previous message is refused (A2A would start a
second task in the same context); while the session is ``needs_input``, the message is the
answer and goes to the waiting task.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ...diagnostics import Check
from ...errors import BackendError, ConfigError, InvalidArgument, SessionsError, UnknownSession, Unsupported
from ...models import (
    BackendInfo,
    Capabilities,
    MessagePage,
    Pending,
    SessionPage,
    SessionRecord,
    Status,
    StoredMessage,
)
from ...settings import A2ASettings
from ...store.base import SessionRow, Store, from_ms
from ..base import ProgressFn, SessionBackend, Watch
from ..requests import CreateRequest, CreateResult, MessageQuery, SendRequest, SessionQuery
from ..stored import stored_message, stored_sessions_page
from .config import AGENTS, AgentConfig
from .mapping import TaskView
from .remote import AgentLink
from .turns import Turn, Turns, ids_of

log = logging.getLogger(__name__)

NAME = "a2a"
CROSS_PROCESS_POLL_S = 1.0
"""How often a waiter re-reads a session that another process (or nobody yet) follows."""


class A2ABackend(SessionBackend):
    """Sessions with the agents of ``SESSIONS_MCP_A2A__AGENTS``; see the module docstring."""

    name = NAME
    capabilities = Capabilities(
        rename=True, delete=True, interrupt=True, assistant_messages=False, streaming=True,
        system_prompt=False, model_choice=False,
    )  # fmt: skip

    def __init__(
        self,
        settings: A2ASettings,
        store: Store,
        *,
        agents: list[AgentConfig] | None = None,
        config_error: ConfigError | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.config_error = config_error
        self.links = {
            a.name: AgentLink(a, timeout_s=settings.timeout_s, card_ttl_s=settings.card_ttl_s) for a in agents or []
        }
        self.default_agent = next(iter(self.links), None)
        self._send_locks: dict[str, anyio.Lock] = {}
        self.turns = Turns(
            store, task_timeout_s=settings.task_timeout_s, poll_max_s=settings.poll_max_s, handle=self._handle
        )

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        self.turns.tg = tg
        if self.config_error is not None:
            log.error("a2a backend misconfigured: %s", self.config_error)

    async def aclose(self) -> None:
        for turn in list(self.turns.live.values()):
            turn.scope.cancel()  # stop following; the remote tasks go on and are adopted after a restart
        for link in self.links.values():
            await link.aclose()

    def info(self, *, default: bool) -> BackendInfo:
        info = super().info(default=default)
        info.cannot.append("rename or delete the remote A2A context (rename and delete act on this server's record)")
        info.agents = list(self.links)
        return info

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def _handle(native_id: str) -> str:
        return f"{NAME}:{native_id}"

    @staticmethod
    def _owner(principal: str) -> str:
        return f"{NAME}\x1f{principal}"

    def _link(self, agent: str | None) -> AgentLink:
        if self.config_error is not None:
            raise self.config_error
        name = agent or self.default_agent
        if name is None or name not in self.links:
            raise InvalidArgument(
                f"unknown A2A agent {name!r}; configured in {AGENTS}: {', '.join(self.links) or '(none)'}"
            )
        return self.links[name]

    async def _row(self, principal: str, native_id: str) -> SessionRow:
        row = await self.store.get_session(self._owner(principal), native_id)
        if row is None:
            raise UnknownSession(self._handle(native_id))
        return row

    async def _tail(self, row: SessionRow, n: int = 4) -> list[StoredMessage]:
        got = await self.store.list_messages(row.owner, row.id, after_seq=max(row.last_seq - n, 0), limit=n)
        return [stored_message(m) for m in got[1]] if got is not None else []

    async def _last_ids(self, row: SessionRow) -> dict[str, str]:
        for m in reversed(await self._tail(row)):
            ids = ids_of([p.model_dump() for p in m.parts])
            if ids:
                return ids
        return {}

    async def _record(self, row: SessionRow) -> SessionRecord:
        pending = None
        if row.status is Status.NEEDS_INPUT:
            for m in reversed(await self._tail(row)):
                ids = ids_of([p.model_dump() for p in m.parts])
                if m.role == "assistant" and ids.get("state") == "input-required":
                    pending = Pending(
                        id=ids.get("task_id", m.id), kind="question", text=m.text, created_at=m.created_at
                    )
                    break
        return SessionRecord(
            native_id=row.id, title=row.title, status=row.status, error=row.error,
            created_at=from_ms(row.created_at), updated_at=from_ms(row.updated_at),
            message_count=row.message_count, agent=row.agent, head=str(row.last_seq), pending=pending,
        )  # fmt: skip

    async def _adopt(self, row: SessionRow) -> None:
        """A session running with nobody here following its task: follow it (restart, other process)."""
        if row.status is not Status.RUNNING or row.id in self.turns.live or row.agent not in self.links:
            return
        ids = await self._last_ids(row)
        if ids.get("task_id"):
            self.turns.adopt(row.owner, row.id, self.links[row.agent], ids)

    # --- reading -------------------------------------------------------------------------

    async def get_session(self, principal: str, native_id: str) -> SessionRecord:
        row = await self._row(principal, native_id)
        await self._adopt(row)
        return await self._record(row)

    async def list_sessions(self, q: SessionQuery) -> SessionPage:
        return await stored_sessions_page(self.store, self._owner(q.principal), q, self._record)

    async def list_messages(self, q: MessageQuery) -> MessagePage:
        try:
            seq = int(q.after) if q.after is not None else 0
        except ValueError:
            raise InvalidArgument("bad cursor: pass a cursor returned by this server") from None
        got = await self.store.list_messages(
            self._owner(q.principal), q.native_id, after_seq=seq, limit=q.limit, roles=q.roles
        )
        if got is None:
            raise UnknownSession(self._handle(q.native_id))
        row, msgs, more = got
        await self._adopt(row)
        return MessagePage(items=[stored_message(m) for m in msgs], has_more=more, status=row.status)

    # --- writing -------------------------------------------------------------------------

    async def create_session(self, req: CreateRequest) -> CreateResult:
        link = self._link(req.agent)
        await link.card()  # unreachable, malformed, or needs a token we lack: say so before creating anything
        row, _ = await self.store.create_session(
            owner=self._owner(req.principal), title=req.title, model=None, system=None, agent=link.agent.name,
            status=Status.IDLE, dedupe_key=req.dedupe_key,
        )  # fmt: skip
        if req.prompt is None or row.message_count:
            return CreateResult(session=await self._record(row))
        try:
            msg = await self.turns.begin(
                row.owner, row.id, link, req.prompt, context_id=None, task_id=None, dedupe_key=None
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.delete_session(row.owner, row.id)  # nothing was sent: leave nothing behind
            raise
        return CreateResult(session=await self._record(await self._row(req.principal, row.id)), written=[msg])

    async def send_message(self, req: SendRequest) -> StoredMessage:
        if req.role != "user":
            raise Unsupported(NAME, "take role='assistant' messages", "the remote agent writes the replies")
        lock = self._send_locks.setdefault(req.native_id, anyio.Lock())
        try:
            async with lock:  # two sends at once: the second sees the first one's turn running
                return await self._send(req.principal, req.native_id, req.text, req.dedupe_key)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._send_locks.pop(req.native_id, None)

    async def _send(self, principal: str, native_id: str, text: str, dedupe_key: str | None) -> StoredMessage:
        row = await self._row(principal, native_id)
        if row.agent not in self.links:
            raise InvalidArgument(
                f"the A2A agent {row.agent!r} of this session is no longer configured in {AGENTS}; "
                "add it back, or start a new session"
            )
        link = self.links[row.agent]
        if row.status is Status.RUNNING:
            await self._adopt(row)
            raise InvalidArgument(
                f"A2A agent {row.agent!r} is still working on the previous message; wait for it with "
                f"list_messages(session_id={self._handle(native_id)!r}, wait_s=60), or call interrupt_session first"
            )
        ids = await self._last_ids(row)
        waiting = row.status is Status.NEEDS_INPUT
        return await self.turns.begin(
            row.owner, row.id, link, text, context_id=ids.get("context_id"),
            task_id=ids.get("task_id") if waiting else None, dedupe_key=dedupe_key,
            answered=ids.get("question_id", "") if waiting else "",
        )  # fmt: skip

    async def rename_session(self, principal: str, native_id: str, title: str) -> SessionRecord:
        row = await self.store.update_session(self._owner(principal), native_id, title=title)
        if row is None:
            raise UnknownSession(self._handle(native_id))
        return await self._record(row)

    async def interrupt_session(self, principal: str, native_id: str) -> SessionRecord:
        row = await self._row(principal, native_id)
        if row.status not in (Status.RUNNING, Status.NEEDS_INPUT):
            return await self._record(row)
        link = self.links.get(row.agent or "")
        ids = await self._last_ids(row)
        task_id = ids.get("task_id", "")
        live = self.turns.live.get(row.id)
        if live is not None:
            live.interrupted = True  # whatever ends the turn now, it was interrupted
        if link is not None and task_id:
            await link.cancel(task_id)  # the SDK may never send "canceled" on an open stream: re-read below
        if live is not None:
            live.scope.cancel()
        view: TaskView | None = None
        if link is not None and task_id:
            try:
                view = await link.get_task(task_id)
            except SessionsError:
                view = None
        if row.status is Status.NEEDS_INPUT or link is None:
            await self.store.update_session(row.owner, row.id, status=Status.IDLE, clear_error=True)
            self.turns.notify(row.id)
        else:
            turn = live or Turn(row.owner, row.id, link, ids.get("message_id", ""), ids.get("context_id", ""), task_id)
            await self.turns.finish(
                turn, view or TaskView(task_id, ids.get("context_id", ""), "canceled"), interrupted=True
            )
        return await self._record(await self._row(principal, native_id))

    async def delete_session(self, principal: str, native_id: str) -> None:
        row = await self._row(principal, native_id)
        live = self.turns.live.get(row.id)
        if live is not None:
            live.scope.cancel()
            try:
                with anyio.move_on_after(live.link.timeout_s):
                    await live.link.cancel(live.task_id)
            except SessionsError:
                pass  # the record goes anyway; the agent's task ends on its own
        if not await self.store.delete_session(row.owner, row.id):
            raise UnknownSession(self._handle(native_id))
        self.turns.notify(row.id)

    # --- waiting -------------------------------------------------------------------------

    @asynccontextmanager
    async def _watch(self, principal: str, native_id: str, progress: ProgressFn | None) -> AsyncGenerator[Watch, None]:
        row = await self._row(principal, native_id)
        await self._adopt(row)
        if progress is not None:
            turn = self.turns.live.get(row.id)
            if turn is not None and turn.deltas:
                await progress("".join(turn.deltas))  # what streamed before this waiter arrived
            self.turns.listeners.setdefault(row.id, []).append(progress)
        try:
            yield _TurnWatch(self.turns, row.id)
        finally:
            if progress is not None:
                fns = self.turns.listeners.get(row.id, [])
                if progress in fns:
                    fns.remove(progress)
                if not fns:
                    self.turns.listeners.pop(row.id, None)

    def watch(self, principal: str, native_id: str, *, progress: ProgressFn | None = None) -> Any:
        return self._watch(principal, native_id, progress)

    # --- doctor --------------------------------------------------------------------------

    async def diagnose(self) -> list[Check]:
        if self.config_error is not None:
            return [Check("a2a: configuration", "fail", str(self.config_error), f"set {AGENTS} (and TOKENS)")]
        checks = [Check("a2a: configuration", "ok", f"{len(self.links)} agent(s); default {self.default_agent!r}")]
        for name, link in self.links.items():
            checks.extend(await _diagnose_agent(name, link))
        return checks


async def _diagnose_agent(name: str, link: AgentLink) -> list[Check]:
    where = f"a2a: agent {name}"
    try:
        with anyio.fail_after(link.timeout_s + 5):
            facts = await link.card(fresh=True)
    except (SessionsError, TimeoutError) as exc:
        return [Check(where, "fail", f"{link.agent.url}: {exc or 'no answer'}", f"check {AGENTS} and the agent")]
    auth = "needs auth (" + ", ".join(facts.schemes) + ")" if facts.needs_auth else "no auth required"
    checks = [
        Check(
            where, "ok",
            f"card {facts.name!r}: A2A {facts.version} over {facts.binding}, "
            f"{'streams' if facts.streaming else 'polled (no streaming)'}, {auth}",
        )
    ]  # fmt: skip
    try:  # an authenticated call that cannot change anything: a task that does not exist
        with anyio.fail_after(link.timeout_s + 5):
            await link.get_task(f"sessions-mcp-doctor-{uuid.uuid4()}", doing="checking access with GetTask")
        checks.append(Check(f"{where}: auth", "ok", "the agent answered GetTask"))
    except BackendError as exc:
        if "no longer knows" in str(exc):
            what = "credentials accepted" if link.agent.token is not None else "no credentials needed"
            checks.append(Check(f"{where}: auth", "ok", f"{what} (GetTask answered 'task not found')"))
        elif exc.status in (401, 403):
            checks.append(Check(f"{where}: auth", "fail", str(exc), f"fix the token of {name!r}"))
        else:
            checks.append(Check(f"{where}: auth", "warn", str(exc), "see the message"))
    except (SessionsError, TimeoutError) as exc:
        checks.append(Check(f"{where}: auth", "warn", str(exc) or "no answer", "see the message"))
    return checks


class _TurnWatch(Watch):
    """Wakes on every change this process makes; re-reads every second when nobody here follows the task."""

    def __init__(self, turns: Turns, session_id: str) -> None:
        self.turns = turns
        self.session_id = session_id
        self.seen = turns.versions.get(session_id, 0)

    async def next(self, timeout: float) -> bool:
        now = self.turns.versions.get(self.session_id, 0)
        if now != self.seen:
            self.seen = now
            return True
        followed = self.session_id in self.turns.live
        tick = timeout if followed else min(timeout, CROSS_PROCESS_POLL_S)
        event = self.turns.event(self.session_id)
        with anyio.move_on_after(max(tick, 0.0)):
            await event.wait()
            self.seen = self.turns.versions.get(self.session_id, 0)
            return True
        return tick < timeout
