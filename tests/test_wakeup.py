"""Cross-process wake-ups on SQLite: a commit in another process wakes the change feed at once,
with no poll to wait for (the feed's poll is set to an hour here)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from sessions_mcp.models import Status
from sessions_mcp.store.feed import ChangeFeed
from sessions_mcp.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

WRITER = textwrap.dedent(
    """
    import sys, anyio
    from sessions_mcp.models import Status
    from sessions_mcp.store.sqlite import SqliteStore

    async def main() -> None:
        store = SqliteStore(sys.argv[1])
        await store.open()
        await store.create_session(owner="local", title="from another process", model=None, system=None,
                                   agent=None, status=Status.IDLE)
        await store.close()

    anyio.run(main)
    """
)


def write_from_another_process(db: Path) -> None:
    subprocess.run([sys.executable, "-c", WRITER, str(db)], check=True, timeout=60)


async def test_a_commit_in_another_process_wakes_the_feed_without_polling(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SqliteStore(db)
    await store.open()
    try:
        assert store._wakeup is not None  # pyright: ignore[reportPrivateUsage]
        feed = ChangeFeed(store, poll_interval=3600)
        async with anyio.create_task_group() as tg:
            await feed.start(tg)
            async with feed.interested():
                with anyio.fail_after(30):
                    while not store._wakeup.listening:  # pyright: ignore[reportPrivateUsage]
                        await anyio.sleep(0.01)
                for _ in range(2):  # and again: each poke is consumed, the next one wakes it too
                    ticket = feed.ticket()
                    await anyio.to_thread.run_sync(write_from_another_process, db)
                    assert await ticket.wait(60), "only a wake-up could have woken it"
            tg.cancel_scope.cancel()
    finally:
        await store.close()
    assert store._wakeup is None  # pyright: ignore[reportPrivateUsage]


async def test_a_dead_listeners_socket_is_removed_by_the_next_writer(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = SqliteStore(db)
    await store.open()
    try:
        wakeup = store._wakeup  # pyright: ignore[reportPrivateUsage]
        assert wakeup is not None
        wakeup.directory.mkdir(mode=0o700, exist_ok=True)
        dead = wakeup.directory / "1-deadbeef.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.bind(str(dead))  # bound, then closed: what a killed process leaves behind
        assert dead.exists()
        await store.create_session(owner="local", title=None, model=None, system=None, agent=None,
                                   status=Status.IDLE)  # fmt: skip
        assert not dead.exists()
    finally:
        await store.close()


async def test_a_writer_that_does_not_poke_makes_the_feed_poll_again(tmp_path: Path) -> None:
    """A commit found by the safety poll, not by a wake-up (a process of another user or version),
    switches the feed back to its short poll for a while: no wait lasts the safety interval twice."""
    db = tmp_path / "s.db"
    store, silent = SqliteStore(db), SqliteStore(db)
    await store.open()
    await silent.open()
    try:
        assert silent._wakeup is not None  # pyright: ignore[reportPrivateUsage]
        silent._wakeup.close()  # pyright: ignore[reportPrivateUsage]
        silent._wakeup = None  # pyright: ignore[reportPrivateUsage]  # writes, never pokes
        feed = ChangeFeed(store, poll_interval=0.05)
        async with anyio.create_task_group() as tg:
            await feed.start(tg)
            async with feed.interested():
                assert not feed.impatient
                ticket = feed.ticket()
                await silent.create_session(owner="local", title=None, model=None, system=None, agent=None,
                                            status=Status.IDLE)  # fmt: skip
                assert await ticket.wait(60)
                assert feed.impatient
            tg.cancel_scope.cancel()
    finally:
        await silent.close()
        await store.close()
