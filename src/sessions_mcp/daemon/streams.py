"""MCP message streams over a client's stdin and stdout descriptors, as handed to the daemon.

Pipes and sockets (what clients hand a server) are read and written without blocking, straight
from the event loop, so a thousand connections cost no thread. Anything else (a terminal, a
regular file) is served from worker threads, as the SDK's own stdio transport does. Framing and
answers match the in-process transport (:mod:`sessions_mcp.stdio`): one JSON-RPC message per line,
and a line that is not a message gets the JSON-RPC error the spec prescribes.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from mcp.shared._context_streams import create_context_streams  # pyright: ignore[reportPrivateUsage]
from mcp.shared.message import SessionMessage

from ..stdio import MAX_LINE_BYTES, PARSE_ERROR, _error, parse_line  # pyright: ignore[reportPrivateUsage]

CHUNK = 1 << 16


def _pollable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class FdIO:
    """Reads and writes one descriptor: non-blocking for pipes and sockets, threads otherwise."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pollable = _pollable(fd)
        if self.pollable:
            os.set_blocking(fd, False)

    async def read(self) -> bytes:
        """Some bytes, or b"" at end of file."""
        if not self.pollable:
            return await anyio.to_thread.run_sync(os.read, self.fd, CHUNK, abandon_on_cancel=True)
        while True:
            try:
                return os.read(self.fd, CHUNK)
            except BlockingIOError:
                await anyio.wait_readable(self.fd)

    async def write(self, data: bytes) -> None:
        """All of ``data``."""
        view = memoryview(data)
        while view:
            if not self.pollable:
                n = await anyio.to_thread.run_sync(os.write, self.fd, view)
            else:
                try:
                    n = os.write(self.fd, view)
                except BlockingIOError:
                    await anyio.wait_writable(self.fd)
                    continue
            view = view[n:]


@asynccontextmanager
async def fd_streams(stdin_fd: int, stdout_fd: int) -> AsyncGenerator[tuple[Any, Any]]:
    """(read stream, write stream) for ``Server.run`` over these descriptors; closes them at exit.

    Lines are parsed and bad ones answered exactly as the in-process transport does
    (:func:`sessions_mcp.stdio.parse_line`). At exit, answers already queued are written before
    the descriptors close, unless the whole connection is being cancelled.
    """
    reader, writer = FdIO(stdin_fd), FdIO(stdout_fd)
    read_send, read_recv = create_context_streams[SessionMessage | Exception](0)
    write_send, write_recv = create_context_streams[SessionMessage](0)
    in_scope = anyio.CancelScope()
    out_lock = anyio.Lock()

    async def write_line(data: bytes) -> None:
        async with out_lock:
            await writer.write(data)

    async def handle(line: bytes) -> None:
        parsed = parse_line(line)
        if parsed is None:
            return
        if isinstance(parsed, SessionMessage):
            await read_send.send(parsed)
            return
        await write_line(json.dumps(parsed, separators=(",", ":")).encode() + b"\n")

    async def pump_in() -> None:
        with in_scope:
            async with read_send:
                buf = b""
                skipping = False
                while True:
                    try:
                        chunk = await reader.read()
                    except OSError:  # the client went away (ECONNRESET on a socket)
                        chunk = b""
                    if not chunk:
                        if buf.strip() and not skipping:
                            await handle(buf)
                        return
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if skipping:
                            skipping = False
                            continue
                        await handle(line)
                    if len(buf) > MAX_LINE_BYTES:
                        if not skipping:
                            await write_line(
                                json.dumps(_error(None, PARSE_ERROR, "Parse error: line too long")).encode() + b"\n"
                            )
                        skipping, buf = True, b""

    async def pump_out() -> None:
        async with write_recv:
            async for session_message in write_recv:
                data = session_message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                try:
                    await write_line(data.encode())
                except OSError:  # the client closed its end: drop what is left, as a closed pipe would
                    continue

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_in)
            tg.start_soon(pump_out)
            try:
                yield read_recv, write_send
            finally:
                in_scope.cancel()
                await write_send.aclose()
    finally:
        for fd in {stdin_fd, stdout_fd}:
            with contextlib.suppress(OSError):
                os.close(fd)
