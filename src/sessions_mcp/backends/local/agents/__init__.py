"""Agents the server runs to answer user turns of local sessions: a command line or an OpenAI model.

How a turn runs (:class:`TurnRunner`):

1. ``begin_turn`` (called after a user message is stored) starts a task in the server's task
   group, so the turn outlives the tool call that caused it: cancelling a wait or disconnecting
   never stops it; only ``interrupt_session`` (or ``agent_timeout_s``) does.
2. The task claims the turn in the store (:meth:`Store.turn_claim`) for the newest user message.
   The claim is durable and leased: this process renews it every :data:`BEAT_S` seconds; if the
   process dies, the next process that opens the database (or any runner's periodic sweep) marks
   the session ``failed``. A claimed or finished turn is never run a second time, by any process.
3. The agent's output is forwarded as it comes to callers waiting on the session here
   (:meth:`LocalBackend.stream_delta`), capped at ``agent_max_output`` characters, and written as
   one assistant message when the turn ends (status ``idle``; ``failed`` with ``error`` when the
   agent fails, keeping any partial output).
4. A user message that arrived during the turn is answered by the next turn, right after.
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
from anyio.abc import TaskGroup

from ....models import Status
from ....store.base import TURN_LOST, MessageRow, SessionRow, this_host
from .turnio import TurnIO, answer_of

if TYPE_CHECKING:
    from ....settings import AgentSettings, LocalSettings
    from ..backend import LocalBackend
    from ..registry import AgentSpec

log = logging.getLogger(__name__)

LEASE_S = 20.0
"""How long a turn claim lives without a heartbeat; past it any process may fail the turn."""
BEAT_S = 2.0
"""How often a runner renews its claims (and notices interrupts made by other processes)."""
SWEEP_EVERY = 5
"""Every this many beats, fail the turns of dead processes (the sweep on open covers restarts)."""
ORPHAN_AFTER_MS = 10_000
"""A session ``running`` this long with no claim on its newest user message gets its turn started."""
STOP_GRACE_S = 15.0
"""How long interrupting or shutting down waits for a turn to write its end."""

Emit = Callable[[str], Awaitable[None]]


def _readable(parts: list[dict[str, Any]]) -> str:
    from ....models import canonical_parts, json_parts_text

    return json_parts_text(canonical_parts(parts))


class AgentFailed(Exception):
    """The agent could not answer; the message becomes the session's ``error``."""


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One message as an agent sees it."""

    role: str
    text: str


@dataclass(frozen=True, slots=True)
class TurnInput:
    """Everything an agent gets for one turn."""

    session_id: str
    """The local native id (also ``SESSIONS_MCP_SESSION_ID`` for command agents)."""
    turn: int
    """1 for the first agent turn of the session, then 2, 3, ..."""
    prompt: str
    """The user message(s) this turn answers (several, joined by blank lines, when they queued up)."""
    messages: list[TranscriptEntry]
    """The whole transcript, oldest first, ending with the new user message(s)."""
    model: str | None = None
    system: str | None = None
    title: str | None = None

    @property
    def session_uuid(self) -> str:
        """A UUID derived from the session id, for agents that want their session ids to be UUIDs."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sessions-mcp:local:{self.session_id}"))

    def as_json(self) -> dict[str, Any]:
        """The transcript document given to command agents (stdin or file)."""
        return {
            "session_id": self.session_id,
            "session_uuid": self.session_uuid,
            "turn": self.turn,
            "title": self.title,
            "model": self.model,
            "system": self.system,
            "prompt": self.prompt,
            "messages": [{"role": m.role, "text": m.text} for m in self.messages],
        }


class Agent(Protocol):
    """Produces the reply of one turn."""

    name: str

    async def run(self, turn: TurnInput, emit: Emit) -> None:
        """Answer ``turn``, passing reply text to ``emit`` as it is produced.

        Raises :class:`AgentFailed` with a readable reason. Cancellation (interrupt, time limit)
        must stop all work the agent started before it propagates.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class _Unconfigured:
    """Stands in for an agent whose settings are missing, so every turn says what to set."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def run(self, turn: TurnInput, emit: Emit) -> None:
        raise AgentFailed(self.reason)

    async def aclose(self) -> None:
        return None


def configured_agents(settings: LocalSettings, agents: dict[str, AgentSettings] | None = None) -> list[str]:
    """The agents sessions may pick: every known agent (presets, configured ones, command/openai)."""
    from ..registry import resolve_agents

    return list(resolve_agents(settings, agents or {}))


def build_agent(spec: AgentSpec, settings: LocalSettings) -> Agent:
    """The agent ``spec`` describes; a misconfigured or missing one fails each turn with what to do."""
    name = spec.name
    if not spec.available:
        return _Unconfigured(name, f"the {name!r} agent cannot run: {spec.detail}")
    if spec.kind == "acp":
        from .acp import AcpAgent

        return AcpAgent(spec)
    if spec.kind == "command":
        from .command import CommandAgent

        local = (
            settings
            if spec.source == "legacy"
            else settings.model_copy(update={"agent_command": shlex.join(spec.argv), "agent_cwd": spec.cwd})
        )
        if not local.agent_command.strip():
            return _Unconfigured(
                name, "the command agent has no command line: set SESSIONS_MCP_LOCAL__AGENT_COMMAND (see docs)"
            )
        try:
            agent = CommandAgent(local)
        except ValueError as exc:
            return _Unconfigured(name, str(exc))
        agent.name = name
        return agent
    from .openai import OpenAIAgent

    local = (
        settings
        if spec.source == "legacy"
        else settings.model_copy(
            update={"openai_model": spec.model, "openai_base_url": spec.base_url or settings.openai_base_url}
        )
    )
    agent = OpenAIAgent(local)
    agent.name = name
    return agent


def create_runner(
    settings: LocalSettings, backend: LocalBackend, agents: dict[str, AgentSettings] | None = None
) -> TurnRunner:
    """The runner of every agent known from ``settings``, writing through ``backend``.

    Agents are built on first use (a preset whose CLI is missing costs nothing until picked).
    """
    from ..registry import resolve_agents

    specs = resolve_agents(settings, agents or {})
    return TurnRunner(
        backend, {}, specs=specs, timeout_s=settings.agent_timeout_s, max_output=settings.agent_max_output,
        max_agents=settings.max_agents, input_timeout_s=settings.input_timeout_s,
    )  # fmt: skip


@dataclass(eq=False)
class _Turn:
    """What this process knows about the turn loop of one session."""

    owner: str
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None
    claim: int = 0
    """Incremented at each claim; 0 while nothing is claimed."""
    stop: Literal["", "interrupt", "lost", "shutdown"] = ""
    again: bool = False
    """A user message arrived here while the loop was busy: look again before leaving."""

    def cancel(self, why: Literal["interrupt", "lost", "shutdown"]) -> None:
        if not self.stop:
            self.stop = why
        if self.scope is not None:
            self.scope.cancel()


class TurnRunner:
    """Runs agent turns for the local backend (implements ``AgentRunner``)."""

    name = "agents"

    def __init__(
        self,
        backend: LocalBackend,
        agents: dict[str, Agent],
        *,
        timeout_s: float = 600.0,
        max_output: int = 1_000_000,
        lease_s: float = LEASE_S,
        beat_s: float = BEAT_S,
        specs: dict[str, AgentSpec] | None = None,
        max_agents: int = 4,
        input_timeout_s: float = 1800.0,
    ) -> None:
        from .slots import Slots

        self.backend = backend
        self.store = backend.store
        self.agents = agents
        self.specs: dict[str, AgentSpec] = dict(specs or {})
        self.slots = Slots(max_agents)
        self.input_timeout_s = input_timeout_s
        self.timeout_s = timeout_s
        self.max_output = max_output
        self.lease_ms = int(lease_s * 1000)
        self.beat_s = beat_s
        self.runner_id = secrets.token_hex(8)
        self.pid = os.getpid()
        self.host = this_host()
        self._tg: TaskGroup | None = None
        self._turns: dict[str, _Turn] = {}
        self._answered: dict[str, int] = {}
        """session id -> newest user message seq a turn here has seen (bounded by the sessions used)."""
        self._closing = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, tg: TaskGroup) -> None:
        """Fail turns left by dead processes, then renew this process's claims in ``tg``."""
        self._tg = tg
        await self._sweep()
        tg.start_soon(self._heartbeat)

    async def aclose(self) -> None:
        """Stop every turn (each is marked failed: the server stopped) and close the agents."""
        self._closing = True
        turns = list(self._turns.values())
        for turn in turns:
            turn.cancel("shutdown")
        with anyio.move_on_after(STOP_GRACE_S):
            for turn in turns:
                await turn.done.wait()
        for agent in list(self.agents.values()):
            try:
                await agent.aclose()
            except Exception:
                log.debug("closing agent %s failed", agent.name, exc_info=True)

    async def forget(self, session_id: str) -> None:
        """The session is gone: stop the agent process kept for its next turn, if any."""
        close = self.slots.idle.get(session_id)
        if close is not None:
            self.slots.forget(session_id)
            with anyio.CancelScope(shield=True):
                await close()

    def running(self) -> list[str]:
        """Ids of the sessions whose turn runs in this process."""
        return list(self._turns)

    # --- AgentRunner -------------------------------------------------------------------------

    def begin_turn(self, owner: str, session_id: str) -> None:
        """Answer the session's newest user message in the background."""
        if self._tg is None or self._closing:
            log.warning("agent runner is not running; session %s waits for the next start", session_id)
            return
        running = self._turns.get(session_id)
        if running is not None:
            running.again = True  # the loop running there answers it when its turn ends
            return
        turn = _Turn(owner)
        self._turns[session_id] = turn
        self._tg.start_soon(self._drive, session_id, turn)

    async def interrupt(self, owner: str, session_id: str) -> bool:
        """Stop this session's turn (kills a command's whole process group) and wait until it ended."""
        turn = self._turns.get(session_id)
        if turn is None or turn.owner != owner:
            return False
        turn.cancel("interrupt")
        with anyio.move_on_after(STOP_GRACE_S):
            await turn.done.wait()
        return True

    # --- the turn loop -----------------------------------------------------------------------

    async def _drive(self, session_id: str, turn: _Turn) -> None:
        try:
            while not turn.stop:
                again = await self._one_turn(session_id, turn)
                if not again:
                    break
        except Exception:
            log.exception("agent turn of local session %s failed unexpectedly", session_id)
        finally:
            self._turns.pop(session_id, None)
            turn.done.set()

    async def _snapshot(self, owner: str, session_id: str) -> tuple[SessionRow, list[MessageRow]] | None:
        msgs: list[MessageRow] = []
        after = 0
        row: SessionRow | None = None
        while True:
            page = await self.store.list_messages(owner, session_id, after_seq=after, limit=200)
            if page is None:
                return None
            row, items, more = page
            msgs.extend(items)
            if not more or not items:
                return row, msgs
            after = items[-1].seq

    async def _one_turn(self, session_id: str, turn: _Turn) -> bool:
        """Claim, run and record one turn; True when another user message is waiting for a turn."""
        owner = turn.owner
        turn.again = False
        snap = await self._snapshot(owner, session_id)
        if snap is None:
            return False
        row, msgs = snap
        users = [m for m in msgs if m.role == "user" and answer_of(m.parts) is None]
        if not users or row.agent is None:
            return False
        upto = users[-1].seq
        if row.status is not Status.RUNNING:
            return False  # interrupted, or the previous turn failed: wait for the next message
        claimed = await self.store.turn_claim(
            owner, session_id, upto_seq=upto, runner=self.runner_id, pid=self.pid, host=self.host,
            lease_ms=self.lease_ms,
        )  # fmt: skip
        if not claimed:
            return False
        turn.claim += 1
        newest = upto
        try:
            agent = self.agent(row.agent)
            await self._run(session_id, turn, agent, self._input(row, msgs, upto), upto)
        finally:
            turn.claim = 0
            self._answered[session_id] = upto
            with anyio.CancelScope(shield=True):
                try:
                    newest = await self.store.turn_release(session_id, runner=self.runner_id)
                except Exception:
                    log.exception("could not release the turn of local session %s", session_id)
        return not turn.stop and (newest > upto or turn.again)

    def _default(self) -> str:
        return self.backend.settings.agent

    def agent(self, name: str) -> Agent:
        """The agent called ``name``, built on first use."""
        agent = self.agents.get(name)
        if agent is None:
            spec = self.specs.get(name)
            if spec is None:
                return _Unconfigured(
                    name,
                    f"the {name!r} agent is not configured on this server "
                    f"(SESSIONS_MCP_LOCAL__AGENT={self._default()}); create a new session",
                )
            agent = self.agents[name] = build_agent(spec, self.backend.settings)
            if isinstance(agent, _Unconfigured):
                log.error("local %s agent: %s", name, agent.reason)
        return agent

    def timeout_for(self, name: str) -> float:
        """The turn time limit of the agent called ``name``."""
        spec = self.specs.get(name)
        return spec.timeout_s if spec is not None and spec.timeout_s else self.timeout_s

    def _input(self, row: SessionRow, msgs: list[MessageRow], upto: int) -> TurnInput:
        # the user messages no turn here has seen yet (several when they queued up during a turn);
        # a process that has not run this session before takes the newest one only, so a message
        # whose turn died with another process is not sent again (it stays in the transcript)
        answered = self._answered.get(row.id, upto - 1)
        fresh = [m.text for m in msgs if m.role == "user" and answered < m.seq <= upto and answer_of(m.parts) is None]
        return TurnInput(
            session_id=row.id,
            turn=sum(1 for m in msgs if m.role == "assistant") + 1,
            prompt="\n\n".join(fresh),
            messages=[TranscriptEntry(m.role, m.text) for m in msgs if m.seq <= upto],
            model=row.model,
            system=row.system,
            title=row.title,
        )

    async def _run(self, session_id: str, turn: _Turn, agent: Agent, inp: TurnInput, upto: int) -> None:
        owner = turn.owner
        extra = await self.store.agent_session(session_id)
        io = TurnIO(
            self.backend, owner, session_id, limit=self.max_output, input_timeout_s=self.input_timeout_s,
            workdir=extra.workdir if extra else None, state=extra.state if extra else None,
        )  # fmt: skip
        error: str | None = None
        started = time.monotonic()
        timeout_s = self.timeout_for(agent.name)
        with anyio.CancelScope() as scope:
            turn.scope = scope
            if turn.stop:
                scope.cancel()
            async with self.slots.hold(session_id, agent, on_queue=self._queued(session_id)):
                with anyio.move_on_after(timeout_s) as limit:
                    try:
                        await agent.run(inp, io)
                    except AgentFailed as exc:
                        error = str(exc) or "the agent failed without saying why"
                    except Exception as exc:
                        log.exception("agent %s crashed in local session %s", agent.name, session_id)
                        error = f"the {agent.name} agent crashed ({type(exc).__name__}); the server log has details"
                if limit.cancelled_caught:
                    error = (
                        f"the agent did not finish within {timeout_s:g} s (SESSIONS_MCP_LOCAL__AGENT_TIMEOUT_S); "
                        "it was stopped. Raise the limit or ask for less"
                    )
        turn.scope = None
        took = time.monotonic() - started
        log.info("agent %s turn %d of %s ended after %.2fs (%s)", agent.name, inp.turn, session_id, took,
                 turn.stop or ("failed" if error else "ok"))  # fmt: skip
        with anyio.CancelScope(shield=True):
            await self._record(owner, session_id, turn, io, error, upto)

    def _queued(self, session_id: str) -> Callable[[], Awaitable[None]]:
        async def say() -> None:
            await self.backend.stream_delta(
                session_id, f"(queued: {self.slots.limit} agents are busy, SESSIONS_MCP_LOCAL__MAX_AGENTS)\n"
            )

        return say

    async def _newer_prompt(self, owner: str, session_id: str, upto: int) -> bool:
        page = await self.store.list_messages(owner, session_id, after_seq=upto, limit=200, roles=["user"])
        return page is not None and any(answer_of(m.parts) is None for m in page[1])

    async def _record(self, owner: str, session_id: str, turn: _Turn, io: TurnIO, error: str | None, upto: int) -> None:
        parts = io.segment
        text = io.segment_text()
        suffix = ""
        status: Status | None
        if turn.stop == "lost":
            status = None  # interrupted or recovered by another process: it already set the status
            suffix = "\n\n[interrupted]" if text else ""
        elif turn.stop == "interrupt":
            status = Status.IDLE
            suffix = "\n\n[interrupted]" if text else ""
        elif turn.stop == "shutdown":
            status, error = Status.FAILED, TURN_LOST
        elif error is not None:
            status = Status.FAILED
        else:
            status = Status.IDLE
            if not parts and not io.written:
                suffix = "(the agent finished without output)"
            if await self._newer_prompt(owner, session_id, upto):
                status = Status.RUNNING  # a user message arrived meanwhile: the next turn follows
        if io.cut:
            suffix += f"\n\n[output cut at {self.max_output:,} characters (SESSIONS_MCP_LOCAL__AGENT_MAX_OUTPUT)]"
        if suffix:
            if parts and parts[-1]["type"] == "text":
                parts[-1]["text"] += suffix
            else:
                parts.append({"type": "text", "text": suffix.lstrip("\n")})
        try:
            if parts:
                await self.backend.append_agent_message(
                    owner, session_id, parts=parts, text=_readable(parts), status=status, error=error
                )
            elif status is not None:
                await self.backend.set_status(owner, session_id, status, error)
            if status is Status.IDLE and await self._newer_prompt(owner, session_id, upto):
                # a user message stored (by another process) between the check above and our
                # write would be left idle and never answered: look again after writing
                await self.backend.set_status(owner, session_id, Status.RUNNING)
        except Exception:
            log.exception("could not record the end of the agent turn of local session %s", session_id)

    # --- background --------------------------------------------------------------------------

    async def _sweep(self) -> None:
        try:
            failed = await self.store.turn_recover(host=self.host, error=TURN_LOST)
        except Exception:
            log.warning("could not check for turns of dead processes", exc_info=True)
            return
        for session_id, owner in failed:
            await self.backend.publish(session_id, owner, "status")
        try:
            orphans = await self.store.turn_orphans(agents=[*self.specs, *self.agents], older_than_ms=ORPHAN_AFTER_MS)
        except Exception:
            log.warning("could not look for turns nobody started", exc_info=True)
            return
        for session_id, owner in orphans:
            log.info("local session %s waits for a turn nobody started; starting it", session_id)
            self.begin_turn(owner, session_id)

    async def _heartbeat(self) -> None:
        beats = 0
        while True:
            await anyio.sleep(self.beat_s)
            beats += 1
            claims = {sid: t.claim for sid, t in self._turns.items() if t.claim}
            if claims:
                try:
                    held = set(await self.store.turn_heartbeat(self.runner_id, list(claims), lease_ms=self.lease_ms))
                except Exception:
                    log.warning("could not renew agent turn claims", exc_info=True)
                else:
                    for sid, claim in claims.items():
                        turn = self._turns.get(sid)
                        if sid not in held and turn is not None and turn.claim == claim and turn.scope is not None:
                            log.info("turn of local session %s was stopped elsewhere; stopping the agent", sid)
                            turn.cancel("lost")
            if beats % SWEEP_EVERY == 0:
                await self._sweep()
                try:
                    await self.slots.reap()
                except Exception:
                    log.warning("could not stop idle agent processes", exc_info=True)
