"""Terminal views for humans: ``sessions-mcp ls``, ``show ID`` and ``tail ID``.

They run on the same backends as the server (built and started the way the server's ``Runtime``
builds them) through :class:`~sessions_mcp.service.SessionService`, as the principal given by
``--principal`` (default ``local``, the owner of every session made over stdio). They only read:
the local agent and the mirror are switched off for the view's own backends, so looking at a
session never starts or resumes an agent turn. Output goes to stdout; progress on anything slow and errors go to stderr.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TextIO, TypeVar

import anyio

from .errors import InvalidArgument, SessionsError, UnknownSession
from .models import (
    AttachmentPart,
    Message,
    RawPart,
    Session,
    Status,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
)
from .terminal import printable

if TYPE_CHECKING:
    from .service import SessionService
    from .settings import Settings

T = TypeVar("T")

PROGRESS_AFTER_S = 0.4
"""A step that takes longer than this gets a progress line on stderr."""
TAIL_WAIT_S = 5.0
"""Long-poll length of one ``list_messages`` call while tailing (the loop repeats until Ctrl-C).

New messages end a poll at once; a status change without a message (an interrupt, say) shows
up when the poll ends, so this bounds how late such a change is printed."""
PAGE = 200
FULL_TEXT = 1_000_000
_TOOL_LINES = 20


class ViewError(Exception):
    """A problem the user fixes by changing a flag or setting; printed without a traceback."""


# --- progress ----------------------------------------------------------------------------------


async def with_progress(
    what: str, fn: Callable[[], Awaitable[T]], *, after: float = PROGRESS_AFTER_S, stream: TextIO | None = None
) -> T:
    """Run ``fn``; if it takes longer than ``after`` seconds, say so on stderr.

    On a terminal the line counts seconds and is erased when the step ends; in a pipe or a log
    it is one plain line, so captured output stays readable.
    """
    out = stream or sys.stderr
    tty = out.isatty()
    shown = False

    async def notice() -> None:
        nonlocal shown
        await anyio.sleep(after)
        shown = True
        started = time.monotonic() - after
        if not tty:
            out.write(f"sessions-mcp: {what}…\n")
            out.flush()
            return
        while True:
            out.write(f"\r\033[K{what}… {time.monotonic() - started:.0f}s")
            out.flush()
            await anyio.sleep(0.5)

    result: list[T] = []
    error: list[Exception] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(notice)
        try:
            result.append(await fn())
        except Exception as exc:  # re-raised below, outside the task group (no ExceptionGroup)
            error.append(exc)
        finally:
            tg.cancel_scope.cancel()
    if shown and tty:
        out.write("\r\033[K")
        out.flush()
    if error:
        raise error[0]
    return result[0]


# --- formatting --------------------------------------------------------------------------------


def _age(then: datetime, now: datetime | None = None) -> str:
    seconds = int(max(((now or datetime.now(UTC)) - then).total_seconds(), 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def session_table(sessions: list[Session], *, width: int, now: datetime | None = None) -> str:
    """``ls`` output: one row per session."""
    rows = [("ID", "STATUS", "UPDATED", "MSGS", "TITLE")]
    for s in sessions:
        title = s.title or ""
        if s.status is Status.FAILED and s.error:
            title = f"{title} (error: {s.error})" if title else f"(error: {s.error})"
        rows.append(
            (printable(s.id), s.status.value, f"{_age(s.updated_at, now)} ago", str(s.message_count), printable(title))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines: list[str] = []
    for r in rows:
        head = "  ".join(cell.ljust(widths[i]) if i != 3 else cell.rjust(widths[i]) for i, cell in enumerate(r[:4]))
        room = max(width - len(head) - 2, 10)
        title = r[4] if len(r[4]) <= room else r[4][: room - 1] + "…"
        lines.append(f"{head}  {title}".rstrip())
    return "\n".join(lines) + "\n"


def _when(ts: datetime, previous: datetime | None) -> str:
    local = ts.astimezone()
    if previous is not None and previous.astimezone().date() == local.date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def _indent(text: str, prefix: str = "  ") -> list[str]:
    return [prefix + line if line else "" for line in text.splitlines()] or [""]


def _part_lines(part: object) -> list[str]:
    import json

    match part:
        case TextPart(text=text):
            return _indent(text)
        case ThinkingPart(text=text, redacted=redacted):
            if redacted or not text:
                return ["  (thinking, not shown)"]
            return _indent(text, "  (thinking) ")
        case ToolCallPart(name=name, input=arguments):
            shown = json.dumps(arguments, ensure_ascii=False, default=str) if arguments is not None else ""
            return [f"  > tool call {name} {shown[:300]}{'…' if len(shown) > 300 else ''}".rstrip()]
        case ToolResultPart(output=output, is_error=is_error):
            label = "tool error" if is_error else "tool result"
            lines = output.splitlines()
            head = [f"  > {label}:"] + ["    " + line for line in lines[:_TOOL_LINES]]
            if len(lines) > _TOOL_LINES:
                head.append(f"    … {len(lines) - _TOOL_LINES} more line(s)")
            return head
        case AttachmentPart(name=name, media_type=media_type, url=url):
            return [f"  [attachment: {name or media_type}{' ' + url if url else ''}]"]
        case RawPart(backend_type=kind):
            return [f"  [{kind or 'unknown'} block]"]
        case _:
            return []


def message_lines(m: Message, previous: Message | None) -> list[str]:
    """A message for the terminal: a header (role, time) and the indented body."""
    if previous is not None and previous.id == m.id and m.text_offset > 0:
        return _indent(m.text)  # the rest of a message that was cut at the page size
    lines = [f"{m.role} · {_when(m.created_at, previous.created_at if previous else None)}"]
    parts = m.parts if m.parts else [TextPart(text=m.text)]
    for part in parts:
        lines += _part_lines(part)
    return lines


def session_header(s: Session) -> list[str]:
    """Title block of ``show``."""
    lines = [s.title or "(untitled session)", f"  id       {s.id}"]
    status = s.status.value + (f": {s.error}" if s.error else "")
    lines.append(f"  status   {status}")
    created = s.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    lines.append(f"  created  {created} ({_age(s.created_at)} ago), updated {_age(s.updated_at)} ago")
    extra = ", ".join(x for x in (f"agent {s.agent}" if s.agent else "", f"model {s.model}" if s.model else "") if x)
    lines.append(f"  messages {s.message_count}" + (f"; {extra}" if extra else ""))
    return lines


# --- commands ----------------------------------------------------------------------------------


def _emit(out: TextIO, lines: Iterable[str]) -> None:
    for line in lines:
        out.write(printable(line) + "\n")  # a line break left inside a line is shown, not obeyed
    out.flush()


def _statuses(raw: str | None) -> list[Status] | None:
    if not raw:
        return None
    out: list[Status] = []
    for item in (x.strip() for x in raw.split(",") if x.strip()):
        try:
            out.append(Status(item))
        except ValueError:
            choices = ", ".join(s.value for s in Status)
            raise ViewError(f"unknown status {item!r} for --status; use one or more of: {choices}") from None
    return out


def _not_found(session_id: str, principal: str) -> ViewError:
    return ViewError(
        f"no session {session_id!r} for principal {principal!r}. Run 'sessions-mcp ls' to see ids; sessions made "
        "over HTTP belong to their token's principal (pass --principal NAME), and other backends must be enabled "
        "(SESSIONS_MCP_BACKENDS or --backends)"
    )


async def _ls(service: SessionService, principal: str, args: argparse.Namespace, out: TextIO) -> int:
    limit = getattr(args, "limit", 20)
    if not 1 <= limit <= 200:
        raise ViewError(f"--limit must be between 1 and 200 (got {limit})")
    backend = getattr(args, "backend", None)
    if backend and backend not in service.backends:
        raise ViewError(
            f"backend {backend!r} is not enabled (enabled: {', '.join(service.backends)}); "
            "enable it with SESSIONS_MCP_BACKENDS or --backends"
        )
    statuses = _statuses(getattr(args, "status", None))
    page = await with_progress(
        "listing sessions",
        lambda: service.list_sessions(
            principal, backend=backend, status=statuses, query=getattr(args, "query", None), cursor=None, limit=limit
        ),
    )
    if not page.sessions:
        sys.stderr.write(
            f"no sessions for principal {principal!r} on {backend or ', '.join(service.backends)}"
            + (f" with status {getattr(args, 'status', '')}" if statuses else "")
            + ". Sessions made over HTTP belong to their token's principal: pass --principal NAME.\n"
        )
        return 0
    width = shutil.get_terminal_size((120, 24)).columns if out.isatty() else 200
    out.write(session_table(page.sessions, width=width))
    out.flush()
    if page.next_cursor:
        sys.stderr.write(f"(showing the {limit} most recent; more with --limit N, up to 200)\n")
    return 0


async def _all_messages(service: SessionService, principal: str, session_id: str) -> tuple[list[Message], str]:
    """Every message of a session, oldest first, and the cursor after the last one."""
    messages: list[Message] = []
    cursor: str | None = None
    while True:
        page = await service.list_messages(
            principal, session_id=session_id, after=cursor, limit=PAGE, roles=None, wait_s=0, max_chars=FULL_TEXT
        )
        messages += [Message.model_validate(m) for m in page.messages]
        cursor = page.next_cursor
        if not page.has_more or not page.messages:
            return messages, cursor


async def _show(service: SessionService, principal: str, session_id: str, out: TextIO) -> int:
    session = await service.get_session(principal, session_id)
    messages, _ = await with_progress("reading the transcript", lambda: _all_messages(service, principal, session_id))
    lines = session_header(session)
    previous: Message | None = None
    for m in messages:
        if previous is None or previous.id != m.id:
            lines.append("")
        lines += message_lines(m, previous)
        previous = m
    if not messages:
        lines += ["", "(no messages yet)"]
    _emit(out, lines)
    return 0


async def _tail(service: SessionService, principal: str, session_id: str, lines_wanted: int, out: TextIO) -> int:
    if lines_wanted < 0:
        raise ViewError(f"--lines must be 0 or more (got {lines_wanted})")
    session = await service.get_session(principal, session_id)
    history, cursor = await with_progress(
        "reading the transcript", lambda: _all_messages(service, principal, session_id)
    )
    title = f' "{session.title}"' if session.title else ""
    sys.stderr.write(printable(f"following {session.id}{title} [{session.status.value}]; Ctrl-C to stop") + "\n")
    sys.stderr.flush()
    recent: deque[Message] = deque(maxlen=lines_wanted or None)
    if lines_wanted:
        recent.extend(history)
    previous: Message | None = None
    for m in recent:
        _emit(out, ([""] if previous is None or previous.id != m.id else []) + message_lines(m, previous))
        previous = m
    status = session.status
    while True:
        try:
            page = await service.list_messages(
                principal, session_id=session_id, after=cursor, limit=PAGE, roles=None, wait_s=TAIL_WAIT_S,
                max_chars=FULL_TEXT,
            )  # fmt: skip
        except UnknownSession:
            _emit(out, ["", f"· session {session_id} was deleted"])
            return 0
        for m in (Message.model_validate(v) for v in page.messages):
            _emit(out, ([""] if previous is None or previous.id != m.id else []) + message_lines(m, previous))
            previous = m
        if page.status is not status:
            note = f"· status {status.value} → {page.status.value}"
            if page.status is Status.FAILED:
                current = await service.get_session(principal, session_id)
                note += f": {current.error}" if current.error else ""
            _emit(out, ["", note])
            status = page.status
        cursor = page.next_cursor


@asynccontextmanager
async def open_service(settings: Settings) -> AsyncGenerator[SessionService]:
    """The store, the backends and the service, started as the server's ``Runtime`` starts them.

    Built here rather than through :class:`sessions_mcp.server.Runtime` so a view does not import
    the MCP server stack (about 0.8 s of start-up on every ``ls``).
    """
    from .backends import create_backend
    from .service import SessionService
    from .store import create_store

    store = create_store(settings.local)
    service = SessionService({name: create_backend(name, settings, store) for name in settings.backends}, store)
    async with anyio.create_task_group() as tg:
        await service.start(tg)
        try:
            yield service
        finally:
            with anyio.CancelScope(shield=True):
                await service.aclose()
            tg.cancel_scope.cancel()


def run(command: str, settings: Settings, args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``ls``, ``show`` or ``tail``; the exit status (1 for a user error, printed on stderr)."""
    stream = out or sys.stdout
    principal = getattr(args, "principal", None) or "local"
    # A view only reads: no agent turns, no mirroring, whatever the server's configuration says.
    local = settings.local.model_copy(update={"agent": "none", "mirror": ""})
    quiet = settings.model_copy(update={"local": local})

    async def dispatch(service: SessionService) -> int:
        session_id = getattr(args, "session_id", "") or ""
        try:
            if command == "ls":
                return await _ls(service, principal, args, stream)
            if command == "show":
                return await _show(service, principal, session_id, stream)
            if command == "tail":
                return await _tail(service, principal, session_id, getattr(args, "lines", 10), stream)
        except UnknownSession:
            raise _not_found(session_id, principal) from None
        except InvalidArgument as exc:
            raise ViewError(str(exc)) from None
        raise ViewError(f"unknown view {command!r}; use ls, show or tail")

    async def main() -> int:
        async with open_service(quiet) as service:
            # errors are turned into messages here: past the service's task group they would
            # arrive wrapped in an exception group
            try:
                return await dispatch(service)
            except ViewError as exc:
                sys.stderr.write(printable(f"sessions-mcp {command}: {exc}") + "\n")
                return 1
            except SessionsError as exc:
                sys.stderr.write(printable(f"sessions-mcp {command}: {exc}") + "\n")
                return 2

    return anyio.run(main)
