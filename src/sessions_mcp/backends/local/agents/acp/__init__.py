"""The ``acp`` agent kind: a coding agent driven over the Agent Client Protocol (JSON-RPC on stdio).

Per session, one agent process, started at the session's first turn and kept for the next ones
(it holds a slot of ``SESSIONS_MCP_LOCAL__MAX_AGENTS`` until another session needs it). A turn:

1. start the process if needed (``initialize``); open the agent's conversation: ``session/load``
   of the ACP session id stored for this session (so a follow-up continues the same conversation,
   also after a restart; the replay is not recorded again), else ``session/new`` (storing its id);
   when a stored conversation cannot be loaded, the transcript so far is given to the new one.
2. put the agent in the mode where it asks before acting (the preset's ``ask_modes``), set the
   preset's config options and the model (``model`` config option, else the preset's flag);
3. ``session/prompt``; updates become parts as they arrive (:mod:`.updates`); permission requests
   are answered by the agent's ``PERMISSIONS`` policy or surfaced as ``needs_input``;
4. interrupt / time limit: ``session/cancel``, then the process group is stopped if the turn has
   not ended within :data:`CANCEL_GRACE_S`. Every stop reason (``cancelled`` included, which is how
   the Codex adapters end a rejected turn) ends the turn normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import anyio
from acp import text_block
from pydantic import ValidationError

from .....models import PendingOption
from .. import AgentFailed, Emit, TurnInput
from ..turnio import TurnIO
from .process import AcpProcess
from .updates import Translator

if TYPE_CHECKING:
    from ...registry import AgentSpec
    from ..slots import Closer

log = logging.getLogger(__name__)

START_TIMEOUT_S = 90.0
"""First start of a CLI in a fresh HOME took up to 24 s here (droid); adapters more on a cold disk."""
OPEN_TIMEOUT_S = 60.0
CANCEL_GRACE_S = 5.0
NOTIFY_S = 2.0
"""How long writing ``session/cancel`` may take: the SDK's writer task may be gone (an event loop
cancelling every task at once ends it) and a write then never completes."""
HISTORY_CHARS = 60_000


def _env(spec: AgentSpec) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("SESSIONS_MCP_", "_SESSIONS_MCP_"))}
    for key, value in spec.env.items():
        env.setdefault(key, value)
    return env


def _pick(options: list[PendingOption], *, allow: bool) -> PendingOption | None:
    kinds = ("allow_once", "allow_always") if allow else ("reject_once", "reject_always")
    for kind in kinds:
        for o in options:
            if o.kind == kind:
                return o
    return None


def _summary(value: Any, limit: int = 500) -> str:
    if value in (None, {}, ""):
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


async def _after_creation_minute(created: float | None) -> None:
    """Gemini CLI loses a session reloaded in the UTC minute it was created: wait for the next one."""
    if not created:
        return
    now = time.time()
    if int(now // 60) == int(created // 60):
        await anyio.sleep(60 - now % 60 + 0.5)


class AcpAgent:
    """Runs the turns of every session of one ACP agent (see the module docstring)."""

    def __init__(self, spec: AgentSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.live: dict[str, AcpProcess] = {}

    # --- process lifecycle -------------------------------------------------------------------

    def idle_closer(self, session_id: str) -> Closer | None:
        """How to stop this session's process later (None when it is not running)."""
        proc = self.live.get(session_id)
        if proc is None or not proc.alive:
            self.live.pop(session_id, None)
            return None

        async def close() -> None:
            if self.live.get(session_id) is proc:
                del self.live[session_id]
            await proc.stop()

        return close

    async def aclose(self) -> None:
        """Stop every agent process."""
        procs, self.live = list(self.live.values()), {}
        for proc in procs:
            with contextlib.suppress(Exception):
                await proc.stop()

    async def _process(self, turn: TurnInput, io: TurnIO) -> AcpProcess:
        proc = self.live.get(turn.session_id)
        if proc is not None and proc.alive:
            return proc
        if proc is not None:
            await proc.stop()
        argv = list(self.spec.argv)
        model = turn.model or self.spec.model
        preset = self.spec.preset
        if model and preset is not None and preset.model_flag:
            argv += [preset.model_flag, model]
        cwd = self._cwd(io)
        proc = AcpProcess(argv, cwd=cwd, env=_env(self.spec))
        self.live[turn.session_id] = proc
        try:
            with anyio.fail_after(START_TIMEOUT_S):
                await proc.start()
        except BaseException as exc:
            self.live.pop(turn.session_id, None)
            with anyio.CancelScope(shield=True):
                await proc.stop()
            if isinstance(exc, FileNotFoundError):
                raise AgentFailed(
                    f"the {self.name} agent's program {argv[0]!r} was not found; {self.spec.detail}"
                ) from None
            if isinstance(exc, Exception):
                raise AgentFailed(
                    f"the {self.name} agent did not start ({type(exc).__name__}: {exc}): {proc.stderr_tail()}"
                ) from None
            raise
        return proc

    def _cwd(self, io: TurnIO) -> str:
        cwd = io.workdir or self.spec.cwd or os.getcwd()
        if not os.path.isdir(cwd):
            raise AgentFailed(f"the agent's folder {cwd!r} does not exist; create it or pick another workdir")
        return cwd

    # --- the agent's conversation ------------------------------------------------------------

    async def _open(self, proc: AcpProcess, turn: TurnInput, io: TurnIO) -> tuple[str, bool]:
        """Load the stored conversation or start one; returns its id and whether history must be given."""
        known = io.state.get("acp_session_id")
        caps = proc.init.agent_capabilities if proc.init is not None else None
        cwd = self._cwd(io)
        if isinstance(known, str) and known and caps is not None and caps.load_session:
            if self.spec.preset is not None and self.spec.preset.reload_same_minute_bug:
                await _after_creation_minute(io.state.get("acp_created_at"))
            try:
                with anyio.fail_after(OPEN_TIMEOUT_S):
                    resp = await proc.conn.load_session(cwd=cwd, session_id=known, mcp_servers=[], **self._meta())
                await self._configure(proc, known, resp, turn)
                return known, False
            except AgentFailed:
                raise
            except Exception as exc:
                log.warning("%s: could not load conversation %s (%s); starting a new one", self.name, known, exc)
        with anyio.fail_after(OPEN_TIMEOUT_S):
            resp = await proc.conn.new_session(cwd=cwd, mcp_servers=[], **self._meta())
        await io.save_state(acp_session_id=resp.session_id, acp_created_at=time.time())
        await self._configure(proc, resp.session_id, resp, turn)
        return resp.session_id, bool(known) or turn.turn > 1

    def _meta(self) -> dict[str, Any]:
        preset = self.spec.preset
        return json.loads(preset.session_meta) if preset is not None and preset.session_meta else {}

    async def _configure(self, proc: AcpProcess, sid: str, resp: Any, turn: TurnInput) -> None:
        preset = self.spec.preset
        modes = getattr(resp, "modes", None)
        if preset is not None and preset.ask_modes and modes is not None:
            offered = [m.id for m in modes.available_modes]
            want = next((m for m in preset.ask_modes if m in offered), None)
            if want is not None and want != modes.current_mode_id:
                await _tolerant(proc.conn.set_session_mode(session_id=sid, mode_id=want))
        options = _config_options(resp)
        for key, value in preset.config if preset is not None else ():
            opt = options.get(key)
            if opt is not None:
                typed: str | bool = (value == "true") if getattr(opt, "type", "") == "boolean" else value
                await _tolerant(proc.conn.set_config_option(config_id=key, session_id=sid, value=typed))
        model = turn.model or self.spec.model
        if model and "model" in options and not (preset is not None and preset.model_flag):
            try:
                await _tolerant(proc.conn.set_config_option(config_id="model", session_id=sid, value=model))
            except Exception as exc:
                raise AgentFailed(f"the {self.name} agent refused model {model!r}: {exc}") from None

    # --- one turn ----------------------------------------------------------------------------

    async def run(self, turn: TurnInput, emit: Emit) -> None:
        """Answer one turn; ``emit`` is the runner's :class:`TurnIO`."""
        if not isinstance(emit, TurnIO):
            raise AgentFailed("the acp agent needs the turn runner's TurnIO")
        io = emit
        proc = await self._process(turn, io)
        sid, give_history = proc.loaded or "", False
        if not sid or sid != io.state.get("acp_session_id"):
            try:
                sid, give_history = await self._open(proc, turn, io)
            except AgentFailed:
                await self._drop(turn.session_id, proc)
                raise
            except Exception as exc:
                await self._drop(turn.session_id, proc)
                raise AgentFailed(
                    f"the {self.name} agent could not open its conversation: {exc}; {proc.stderr_tail()}"
                ) from None
            proc.loaded = sid
        text = turn.prompt if not give_history else _with_history(turn)
        await self._prompt(proc, sid, text, io, turn.session_id)

    async def _drop(self, session_id: str, proc: AcpProcess) -> None:
        if self.live.get(session_id) is proc:
            del self.live[session_id]
        with anyio.CancelScope(shield=True):
            await proc.stop()

    async def _prompt(self, proc: AcpProcess, sid: str, text: str, io: TurnIO, session_id: str) -> None:
        tr = Translator(io)
        asks: set[anyio.CancelScope] = set()

        async def on_update(session: str, update: Any) -> None:
            if session == sid:
                async with tr.lock:
                    await tr.update(update)

        async def on_permission(session: str, tool_call: Any, options: list[Any]) -> str | None:
            async with tr.lock:
                call = await tr.track(tool_call)
            opts = [PendingOption(id=o.option_id, label=o.name, kind=str(o.kind)) for o in options]
            what = call.title or call.name
            policy = self.spec.permissions
            if policy != "ask":
                chosen = _pick(opts, allow=policy == "allow")
                await io.note(f"[permission] {what}: {chosen.label if chosen else 'cancelled'} (policy {policy})")
                return chosen.id if chosen else None
            detail = _summary(call.input)
            question = f"The {self.name} agent asks for permission: {what}" + (f"\ninput: {detail}" if detail else "")
            answer: str | None = None
            with anyio.CancelScope() as scope:
                asks.add(scope)
                try:
                    answer = await io.ask("permission", question, opts)
                finally:
                    asks.discard(scope)
            if scope.cancel_called:
                return None
            if answer is None:
                chosen = _pick(opts, allow=False)
                await io.note(f"[permission] {what}: nobody answered in time, rejected")
                return chosen.id if chosen else None
            label = next((o.label for o in opts if o.id == answer), answer)
            await io.note(f"[permission] {what}: {label}")
            return answer

        proc.on_update, proc.on_permission = on_update, on_permission
        task = asyncio.ensure_future(proc.conn.prompt(session_id=sid, prompt=[text_block(text)]))
        try:
            try:
                resp = await asyncio.shield(task)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    for scope in list(asks):
                        scope.cancel()
                    await self._cancel(proc, sid, task, session_id)
                    await tr.finish()
                raise
            except Exception as exc:
                await tr.finish()
                dead = not proc.alive
                await self._drop(session_id, proc) if dead else None
                why = f"exited ({proc.stderr_tail()})" if dead else str(exc)
                raise AgentFailed(f"the {self.name} agent failed: {why}") from None
        finally:
            proc.on_update = proc.on_permission = None
        await tr.finish()
        reason = str(resp.stop_reason)
        if reason == "refusal":
            await io("\n\n[the agent refused to continue]")
        elif reason in ("max_tokens", "max_turn_requests"):
            await io(f"\n\n[the agent stopped: {reason}]")

    async def _cancel(self, proc: AcpProcess, sid: str, task: asyncio.Future[Any], session_id: str) -> None:
        """``session/cancel``, then stop the process group if the turn does not end in time."""
        with contextlib.suppress(Exception), anyio.move_on_after(NOTIFY_S):
            await proc.conn.cancel(session_id=sid)
        with anyio.move_on_after(CANCEL_GRACE_S):
            with contextlib.suppress(BaseException):
                await asyncio.shield(task)
        if not task.done():
            task.cancel()
            log.info("%s agent did not end its turn after session/cancel; stopping its process", self.name)
            await self._drop(session_id, proc)


def _config_options(resp: Any) -> dict[str, Any]:
    """The session's config options by id (each may be wrapped in a RootModel)."""
    out: dict[str, Any] = {}
    raw: list[Any] = list(getattr(resp, "config_options", None) or [])
    for item in raw:
        opt: Any = getattr(item, "root", item)
        out[str(opt.id)] = opt
    return out


async def _tolerant(call: Awaitable[Any]) -> None:
    """Await a settings request whose answer we do not read: an answer the SDK's model rejects
    (droid 0.225 answers session/set_config_option with a shape of its own) still means it was applied."""
    try:
        await call
    except ValidationError as exc:
        log.debug("ACP agent answered a settings request in a non-standard shape: %s", exc)


def _with_history(turn: TurnInput) -> str:
    """The prompt for a new conversation that must carry the session's transcript so far."""
    earlier = [m for m in turn.messages[:-1] if m.role in ("user", "assistant") and m.text.strip()]
    lines = [f"[{m.role}] {m.text}" for m in earlier]
    history = "\n\n".join(lines)[-HISTORY_CHARS:]
    if not history:
        return turn.prompt
    return (
        "(This conversation continues an earlier one whose context was lost. The transcript so far:)\n\n"
        f"{history}\n\n(The new message:)\n\n{turn.prompt}"
    )
