"""The ``command`` agent: runs a configured command line for each user turn, without a shell.

``SESSIONS_MCP_LOCAL__AGENT_COMMAND`` is split once with :func:`shlex.split` into an argument
list. Per turn, each argument may contain these placeholders, replaced in a single pass (text
that a replacement brings in is never scanned again, and no shell ever sees it):

``{prompt}``        the new user message(s) of this turn
``{session_id}``    the local session id (without ``local:``)
``{session_uuid}``  a UUID derived from the session id (for agents that need UUID session ids)
``{turn}``          1 for the first agent turn of the session, then 2, 3, ...

When no argument contains ``{prompt}``, the prompt is appended as the last argument. The whole
transcript (:meth:`TurnInput.as_json`) goes, per ``SESSIONS_MCP_LOCAL__AGENT_INPUT``, to stdin
(``stdin``), to a private temporary file whose path is in ``SESSIONS_MCP_TRANSCRIPT`` (``file``),
or nowhere (``none``; stdin is then empty). The environment is the server's minus every
``SESSIONS_MCP_*`` variable, plus ``SESSIONS_MCP_SESSION_ID``, ``SESSIONS_MCP_SESSION_UUID``,
``SESSIONS_MCP_TURN`` and, when set, ``SESSIONS_MCP_MODEL``.

The command runs in ``SESSIONS_MCP_LOCAL__AGENT_CWD`` (``{session_id}`` allowed; such a folder is
created on first use), in a new process group. Its stdout is the reply, streamed as it comes;
stderr is kept (the tail) for the error. Exit 0 ends the turn ``idle``; any other exit ends it
``failed`` with the tail of stderr. Interrupt, the time limit and shutdown terminate the whole
process group (SIGTERM, then SIGKILL after a grace period); processes the command left behind
after it exited are killed too.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import Process

from ...._http import Redactor
from . import AgentFailed, Emit, TurnInput

if TYPE_CHECKING:
    from ....settings import LocalSettings

log = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"\{(prompt|session_id|session_uuid|turn)\}")
STDERR_KEEP = 64 * 1024
"""Bytes of stderr kept (the end)."""
ERROR_TAIL = 2000
"""Characters of stderr put into the session's error."""
TERM_GRACE_S = 3.0
"""Between SIGTERM and SIGKILL of the process group."""
EXIT_DRAIN_S = 1.0
"""After the command exits, how long to wait for output still in the pipes."""


def _values(turn: TurnInput) -> dict[str, str]:
    return {
        "prompt": turn.prompt,
        "session_id": turn.session_id,
        "session_uuid": turn.session_uuid,
        "turn": str(turn.turn),
    }


def fill(template: str, values: dict[str, str]) -> str:
    """Replace the placeholders of one argument in a single pass."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class CommandAgent:
    """Runs ``agent_command`` per turn. See the module docstring for the contract."""

    name = "command"

    def __init__(self, settings: LocalSettings) -> None:
        try:
            argv = shlex.split(settings.agent_command)
        except ValueError as exc:
            raise ValueError(
                f"SESSIONS_MCP_LOCAL__AGENT_COMMAND cannot be split into arguments ({exc}); check its quotes"
            ) from None
        if not argv:
            raise ValueError("SESSIONS_MCP_LOCAL__AGENT_COMMAND is empty; set the command line of the agent")
        self.argv = argv
        self.input = settings.agent_input
        self.cwd = settings.agent_cwd
        self.redact = Redactor()

    async def aclose(self) -> None:
        """Nothing to release: each turn's process is gone when the turn ends."""

    def argv_for(self, turn: TurnInput) -> list[str]:
        """The argument list of this turn."""
        values = _values(turn)
        args = [fill(a, values) for a in self.argv]
        if not any("{prompt}" in a for a in self.argv):
            args.append(turn.prompt)
        return args

    def env_for(self, turn: TurnInput, transcript: str | None) -> dict[str, str]:
        """The environment of this turn (the server's own settings and secrets left out)."""
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("SESSIONS_MCP_", "_SESSIONS_MCP_"))}
        env["SESSIONS_MCP_SESSION_ID"] = turn.session_id
        env["SESSIONS_MCP_SESSION_UUID"] = turn.session_uuid
        env["SESSIONS_MCP_TURN"] = str(turn.turn)
        if turn.model:
            env["SESSIONS_MCP_MODEL"] = turn.model
        if transcript is not None:
            env["SESSIONS_MCP_TRANSCRIPT"] = transcript
        return env

    def cwd_for(self, turn: TurnInput) -> str | None:
        """The working directory of this turn (created when it is per session)."""
        if not self.cwd:
            return None
        path = Path(fill(self.cwd, _values(turn) | {"prompt": ""})).expanduser()
        if not path.is_dir():
            if "{session_id}" in self.cwd or "{session_uuid}" in self.cwd:
                path.mkdir(parents=True, exist_ok=True)
            else:
                raise AgentFailed(
                    f"the agent's working directory {str(path)!r} does not exist; create it or change "
                    "SESSIONS_MCP_LOCAL__AGENT_CWD"
                )
        return str(path)

    async def run(self, turn: TurnInput, emit: Emit) -> None:
        """Run the command for one turn; see the module docstring."""
        document = json.dumps(turn.as_json(), ensure_ascii=False).encode()
        with tempfile.TemporaryDirectory(prefix="sessions-mcp-turn-") as tmp:
            transcript: str | None = None
            if self.input == "file":
                transcript = str(Path(tmp) / "transcript.json")
                fd = os.open(transcript, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(document)
            try:
                cwd = getattr(emit, "workdir", None) or self.cwd_for(turn)  # create_session(workdir=...) first
            except OSError as exc:
                raise AgentFailed(f"cannot create the agent's working directory: {exc.strerror}") from None
            await self._run(
                self.argv_for(turn),
                env=self.env_for(turn, transcript),
                cwd=cwd,
                stdin=document if self.input == "stdin" else None,
                emit=emit,
            )

    async def _run(
        self, argv: list[str], *, env: dict[str, str], cwd: str | None, stdin: bytes | None, emit: Emit
    ) -> None:
        program = Path(argv[0]).name
        try:
            _check_program(argv[0], cwd=cwd, path=env.get("PATH"))
            process = await anyio.open_process(
                guarded(argv),
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,  # its own process group: interrupt kills everything it started
            )
        except FileNotFoundError:
            raise AgentFailed(
                f"the agent command {argv[0]!r} was not found; install it or fix SESSIONS_MCP_LOCAL__AGENT_COMMAND "
                "(use an absolute path when PATH differs for the server)"
            ) from None
        except PermissionError:
            raise AgentFailed(f"the agent command {argv[0]!r} is not executable; check its permissions") from None
        except OSError as exc:
            if exc.errno == errno.E2BIG:
                raise AgentFailed(
                    "the message is too long to pass as a command-line argument; send a shorter one, or let the "
                    "agent read it from the transcript (SESSIONS_MCP_LOCAL__AGENT_INPUT=stdin or file)"
                ) from None
            raise AgentFailed(f"cannot start the agent command {argv[0]!r}: {exc.strerror or exc}") from None
        log.debug("agent command started (pid %d) in %s", process.pid, cwd or os.getcwd())
        stderr = bytearray()
        code = 0
        try:
            async with anyio.create_task_group() as tg:
                out_done = anyio.Event()
                if stdin is not None:
                    tg.start_soon(_feed, process, stdin)
                tg.start_soon(_keep_tail, process, stderr)
                tg.start_soon(_pump, process, emit, out_done)
                code = await process.wait()
                with anyio.move_on_after(EXIT_DRAIN_S):
                    await out_done.wait()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await _stop_group(process)
        if code != 0:
            tail = self.redact(bytes(stderr).decode("utf-8", "replace").strip())[-ERROR_TAIL:]
            how = f"exited with status {code}"
            if code < 0:
                try:
                    how = f"was killed by {signal.Signals(-code).name}"
                except ValueError:
                    how = f"was killed by signal {-code}"
            raise AgentFailed(f"the agent command ({program}) {how}: {tail or '(nothing on stderr)'}")


async def _feed(process: Process, data: bytes) -> None:
    stream = process.stdin
    if stream is None:
        return
    try:
        await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return  # the command does not read its stdin: that is its choice
    finally:
        with contextlib.suppress(anyio.BrokenResourceError, OSError):
            await stream.aclose()


async def _keep_tail(process: Process, tail: bytearray) -> None:
    stream = process.stderr
    if stream is None:
        return
    try:
        async for chunk in stream:
            tail.extend(chunk)
            if len(tail) > STDERR_KEEP:
                del tail[: len(tail) - STDERR_KEEP]
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return


async def _pump(process: Process, emit: Emit, done: anyio.Event) -> None:
    stream = process.stdout
    try:
        if stream is None:
            return
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            async for chunk in stream:
                text = decoder.decode(chunk)
                if text:
                    await emit(text)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        rest = decoder.decode(b"", final=True)
        if rest:
            await emit(rest)
    finally:
        done.set()


GUARDIAN = Path(__file__).with_name("guardian.py")


def guarded(argv: list[str]) -> list[str]:
    """``argv`` run under ``guardian.py`` (Linux): the agent's group is stopped if this server dies,
    even by ``kill -9``. Elsewhere ``argv`` unchanged."""
    if sys.platform != "linux":
        return argv
    return [sys.executable, "-I", "-S", str(GUARDIAN), str(os.getpid()), str(TERM_GRACE_S), "--", *argv]


def _check_program(program: str, *, cwd: str | None, path: str | None) -> None:
    """Raise what ``exec`` of ``program`` would (the guardian execs it, so check before starting it)."""
    candidate = program
    if os.sep in program and not os.path.isabs(program) and cwd:
        candidate = os.path.join(cwd, program)
    if shutil.which(candidate, path=path) is not None:
        return
    if os.sep in program and os.path.exists(candidate):
        raise PermissionError(errno.EACCES, "not executable", program)
    raise FileNotFoundError(errno.ENOENT, "not found", program)


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the process group; False when nobody is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


async def _stop_group(process: Process) -> None:
    """Terminate the command and everything it started (its process group), then reap it."""
    pgid = process.pid  # start_new_session: the group id is the leader's pid
    if process.returncode is None:
        _signal_group(pgid, signal.SIGTERM)
        with anyio.move_on_after(TERM_GRACE_S):
            await process.wait()
    _signal_group(pgid, signal.SIGKILL)  # the leader if it ignored SIGTERM, and anything it left behind
    if process.returncode is None:
        await process.wait()
    try:
        await process.aclose()
    except Exception:
        log.debug("closing the agent process streams failed", exc_info=True)
