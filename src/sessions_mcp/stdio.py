"""Our stdio transport: one JSON-RPC message per line, and an answer for every line.

The SDK's ``stdio_server`` drops a line it cannot parse (the client then waits for its own
timeout) and reads stdin in a worker thread that Ctrl-C cannot interrupt until the next line
arrives. This transport differs in exactly those two ways:

- a line that is not a JSON-RPC message gets the error the JSON-RPC spec prescribes: ``-32700``
  (parse error) for text that is not JSON, ``-32600`` (invalid request) for JSON that is not a
  message (batches, ``"jsonrpc":"1.0"``, float or null ids), ``-32602`` for non-object params,
  with the request's id when it has a usable one and ``null`` otherwise;
- stdin is read without blocking the server: pipes and sockets (what clients hand over) are
  switched to non-blocking mode and read and written on the event loop itself; anything else (a
  terminal, a file) is read by a daemon thread that hands chunks to the loop. Either way
  cancelling the server (SIGINT) does not wait for input. Answers go straight into a pipe with
  room, with no thread hop per message: the two hops per request that a thread-based
  transport makes were a third of the server's CPU for a small tool call (bench budget 2).

Like the SDK, fd 0 and fd 1 are pointed at ``/dev/null`` and stderr while serving, so child
processes cannot read the protocol or write into it; they are restored on exit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.from_thread
import mcp_types as types
from mcp.shared._context_streams import ContextSendStream, create_context_streams  # pyright: ignore[reportPrivateUsage]
from mcp.shared.message import SessionMessage

from . import logfilter

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024 * 1024
"""Longest line accepted; a longer one is skipped to its end and answered with a parse error."""
_CHUNK = 256 * 1024
WRITE_GRACE_S = 5.0
"""How long answers still queued when the server stops may take to be written."""

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602


def diagnose(line: bytes) -> dict[str, Any]:
    """The JSON-RPC error response for a line the SDK could not take as a message."""
    msg_id: Any = None
    try:
        data: Any = json.loads(line)
    except RecursionError:
        return _error(None, PARSE_ERROR, "Parse error: the JSON is nested too deeply")
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(None, PARSE_ERROR, f"Parse error: {str(exc)[:120]}")
    if isinstance(data, list):
        return _error(None, INVALID_REQUEST, "Invalid Request: batches are not supported; send one message per line")
    if not isinstance(data, dict):
        return _error(None, INVALID_REQUEST, "Invalid Request: a message is a JSON object")
    obj: dict[str, Any] = data  # pyright: ignore[reportUnknownVariableType]
    raw_id = obj.get("id")
    if (isinstance(raw_id, str) and not _has_lone_surrogate(raw_id)) or (
        isinstance(raw_id, int) and not isinstance(raw_id, bool)
    ):
        msg_id = raw_id
    if obj.get("jsonrpc") != "2.0":
        return _error(msg_id, INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"')
    if "id" in obj and msg_id is None:
        return _error(None, INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
    if "method" in obj and not isinstance(obj["method"], str):
        return _error(msg_id, INVALID_REQUEST, 'Invalid Request: "method" must be a string')
    if "params" in obj and not isinstance(obj["params"], dict):
        return _error(msg_id, INVALID_PARAMS, 'Invalid params: "params" must be an object')
    if _has_lone_surrogate(obj):
        return _error(msg_id, PARSE_ERROR, "Parse error: a string holds a lone UTF-16 surrogate (not valid Unicode)")
    if "id" not in obj and "method" in obj:
        return _error(None, INVALID_REQUEST, "Invalid Request: a notification this server cannot read")
    return _error(msg_id, INVALID_REQUEST, "Invalid Request: not a JSON-RPC request, notification or response")


def _has_lone_surrogate(value: Any, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        items: dict[Any, Any] = value  # pyright: ignore[reportUnknownVariableType]
        return any(_has_lone_surrogate(k, depth + 1) or _has_lone_surrogate(v, depth + 1) for k, v in items.items())
    if isinstance(value, list):
        seq: list[Any] = value  # pyright: ignore[reportUnknownVariableType]
        return any(_has_lone_surrogate(v, depth + 1) for v in seq)
    return False


def _top_level_id(line: bytes) -> bool:
    try:
        data: Any = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "id" in data


def _error(msg_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def parse_line(line: bytes) -> SessionMessage | dict[str, Any] | None:
    """A message for the server, an error response to write back, or None for a blank line."""
    if not line.strip():
        return None
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except Exception:
        return diagnose(line)
    if isinstance(message, types.JSONRPCNotification) and b'"id"' in line and _top_level_id(line):
        # the SDK reads a request whose id is null, a float or a boolean as a notification and
        # never answers it; the spec says such a request is invalid
        return diagnose(line)
    return SessionMessage(message)


async def route_line(
    line: bytes,
    deliver: Callable[[SessionMessage], Awaitable[None]],
    answer: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Hand a line's message to ``deliver`` or its error response to ``answer`` (see :func:`parse_line`)."""
    parsed = parse_line(line)
    if parsed is None:
        return
    if isinstance(parsed, SessionMessage):
        await deliver(parsed)
    else:
        await answer(parsed)


class _Claimed:
    """fd 0 and 1 moved to private descriptors; the standard ones point at /dev/null and stderr."""

    def __init__(self) -> None:
        self.stdin = os.dup(0)
        self.stdout = os.dup(1)
        os.set_inheritable(self.stdin, False)
        os.set_inheritable(self.stdout, False)
        self._saved = [(0, os.dup(0)), (1, os.dup(1))]
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)

    def restore(self) -> None:
        for fd, saved in self._saved:
            with contextlib.suppress(OSError):
                os.dup2(saved, fd)
                os.close(saved)


def _on_loop(fd: int) -> bool:
    """Switch ``fd`` to non-blocking mode when the event loop can wait on it (a pipe or a socket).

    Terminals are left alone (a shell sharing one would find it non-blocking after we exit), and
    regular files cannot be waited on.
    """
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return False
        os.set_blocking(fd, False)
    except OSError:
        return False
    return True


def _restore_blocking(fd: int) -> None:
    # the open file description is shared with whoever else holds the descriptor
    with contextlib.suppress(OSError):
        os.set_blocking(fd, True)


async def _read_on_loop(fd: int, deliver: Callable[[bytes], Awaitable[None]]) -> None:
    """Read a non-blocking ``fd`` until EOF, handing each chunk on (b"" at the end)."""
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except BlockingIOError:
            await anyio.wait_readable(fd)
            continue
        except OSError:
            chunk = b""
        await deliver(chunk)
        if not chunk:
            return


def _reader_thread(fd: int, deliver: Callable[[bytes], None]) -> None:
    """Read ``fd`` until EOF, handing each chunk to the loop (b"" at the end)."""
    while True:
        try:
            chunk = os.read(fd, _CHUNK)
        except OSError:
            chunk = b""
        try:
            deliver(chunk)
        except Exception:  # the loop is gone: nobody is listening any more
            return
        if not chunk:
            return


@asynccontextmanager
async def stdio_transport(in_fd: int | None = None, out_fd: int | None = None) -> AsyncGenerator[tuple[Any, Any], None]:
    """Serve over stdin/stdout (or the given descriptors); yields the SDK's read and write streams."""
    claimed = _Claimed() if in_fd is None and out_fd is None else None
    rfd = claimed.stdin if claimed else (in_fd if in_fd is not None else 0)
    wfd = claimed.stdout if claimed else (out_fd if out_fd is not None else 1)
    read_writer, read_stream = create_context_streams[SessionMessage | Exception](0)
    write_stream, write_reader = create_context_streams[SessionMessage](0)
    chunks_in, chunks_out = anyio.create_memory_object_stream[bytes](4)
    out_lock = anyio.Lock()

    write_on_loop = _on_loop(wfd)

    async def write_line(data: bytes) -> None:
        async with out_lock:
            view = memoryview(data)
            while view:
                if write_on_loop:
                    try:
                        written = os.write(wfd, view)
                    except BlockingIOError:  # the pipe is full: the client reads slower than we write
                        await anyio.wait_writable(wfd)
                        continue
                else:
                    written = await anyio.to_thread.run_sync(os.write, wfd, view)
                view = view[written:]

    async def reader(send: ContextSendStream[SessionMessage | Exception]) -> None:
        buffer = bytearray()
        skipping = False
        async with send, chunks_out:
            async for chunk in chunks_out:
                if not chunk:
                    break
                buffer += chunk
                while True:
                    end = buffer.find(b"\n")
                    if end < 0:
                        if len(buffer) > MAX_LINE_BYTES:
                            if not skipping:
                                await _answer(_error(None, PARSE_ERROR, "Parse error: line too long"))
                            skipping = True
                            buffer.clear()
                        break
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    if skipping:
                        skipping = False
                        continue
                    await _handle(line, send)
            if buffer.strip() and not skipping:
                await _handle(bytes(buffer), send)

    async def _handle(line: bytes, send: ContextSendStream[SessionMessage | Exception]) -> None:
        await route_line(line, send.send, _refuse)

    async def _refuse(response: dict[str, Any]) -> None:
        log.info("stdio: answered an unparseable line with %s", response["error"]["code"])
        await _answer(response)

    async def _answer(response: dict[str, Any]) -> None:
        await write_line(json.dumps(response, separators=(",", ":")).encode() + b"\n")

    async def writer() -> None:
        async with write_reader:
            async for message in write_reader:
                text = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                await write_line(text.encode() + b"\n")

    token = anyio.lowlevel.current_token()

    def deliver(chunk: bytes) -> None:
        anyio.from_thread.run(chunks_in.send, chunk, token=token)

    read_on_loop = _on_loop(rfd)
    try:
        async with anyio.create_task_group() as tg:
            reading, pumping = anyio.CancelScope(), anyio.CancelScope()
            if read_on_loop:

                async def pump() -> None:
                    with pumping, contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await _read_on_loop(rfd, chunks_in.send)

                tg.start_soon(pump)
            else:
                thread = threading.Thread(target=_reader_thread, args=(rfd, deliver), name="stdin", daemon=True)
                thread.start()

            async def read_all() -> None:
                with reading, contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await reader(read_writer)  # the server stopped reading: nothing left to hand it

            tg.start_soon(read_all)
            tg.start_soon(writer)
            try:
                yield read_stream, write_stream
            finally:
                reading.cancel()  # the server is done; answers already queued are still written
                pumping.cancel()
                tg.cancel_scope.deadline = anyio.current_time() + WRITE_GRACE_S
    finally:
        chunks_in.close()
        if read_on_loop:
            _restore_blocking(rfd)
        if write_on_loop:
            _restore_blocking(wfd)
        if claimed is not None:
            claimed.restore()


async def serve_stdio(mcp: Any) -> None:
    """Run ``mcp`` (an ``MCPServer``) over stdio with this transport."""
    logfilter.install()  # a client that repeats a bad line must not flood its own log with our warnings
    low = mcp._lowlevel_server  # pyright: ignore[reportPrivateUsage]
    async with stdio_transport() as (read_stream, write_stream):
        try:
            await low.run(read_stream, write_stream, low.create_initialization_options())
        except BaseExceptionGroup as group:
            # stopping (SIGINT, EOF) can close a stream an SDK task is still sending into; that
            # is the end of the connection, not an error to show with a traceback
            _, rest = group.split((anyio.BrokenResourceError, anyio.ClosedResourceError))
            if rest is not None:
                _, others = rest.split(anyio.get_cancelled_exc_class())
                if others is None:  # only cancellation left: let it be one (SIGINT then exits 130)
                    raise anyio.get_cancelled_exc_class()() from None
                raise rest from None
            log.debug("stdio: streams closed while stopping", exc_info=True)
