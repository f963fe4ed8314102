"""The web-app mirror of local sessions: exact seed request shapes, parent chain, and a durable
outbox that survives the web app failing (nothing lost or blocked locally, nothing duplicated)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from sessions_mcp.backends.local import LocalBackend
from sessions_mcp.mirror import Mirror, mirror_checks
from sessions_mcp.server import Runtime, build_server
from sessions_mcp.settings import Settings, load_settings

from .conftest import client_for
from .emulators.factory import FactoryAppEmulator, Served

pytestmark = pytest.mark.anyio
TOKEN = "app-CANARY-token-5566778899"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Mirror, "BACKOFF_INITIAL_S", 0.05)
    monkeypatch.setattr(Mirror, "BACKOFF_MAX_S", 0.2)


@pytest.fixture
def app() -> Iterator[tuple[FactoryAppEmulator, Served]]:
    emulator = FactoryAppEmulator(token=TOKEN)
    served = Served(emulator.app)  # bound, not yet listening: the web app is "down" until started
    yield emulator, served
    if served.thread.is_alive():
        served.__exit__()
    else:
        served._sock.close()  # pyright: ignore[reportPrivateUsage]
    assert not emulator.unexpected and not emulator.shape_errors


def settings_for(url: str, tmp_path: Path) -> Settings:
    return load_settings(
        None,
        local={"db": str(tmp_path / "m.db"), "mirror": "factory-app"},
        factory_app={"base_url": url, "token": TOKEN},
    )


class Server:
    def __init__(self, settings: Settings, era: str) -> None:
        self.runtime = Runtime(settings)
        self.client = client_for(build_server(settings, runtime=self.runtime), era)

    @property
    def mirror(self) -> Mirror:
        local = cast(LocalBackend, self.runtime.service.backends["local"])
        assert local.mirror is not None
        return local.mirror

    async def call(self, tool: str, **args: Any) -> dict[str, Any]:
        r = await self.client.call_tool(tool, args)
        assert not r.is_error, r.content
        assert r.structured_content is not None
        return r.structured_content


@pytest.fixture
async def server(app: tuple[FactoryAppEmulator, Served], tmp_path: Path, era: str) -> AsyncIterator[Server]:
    s = Server(settings_for(app[1].url, tmp_path), era)
    async with s.client:
        yield s


async def settled(server: Server, timeout: float = 20.0) -> None:
    """Wait until the worker found nothing due and every recorded change is mirrored."""
    with anyio.fail_after(timeout):
        while True:
            await server.mirror.idle.wait()
            stats = await server.mirror.store.mirror_stats(failed_after=5)
            if stats.pending == 0:
                return
            server.mirror._wake.set()  # pyright: ignore[reportPrivateUsage]
            await anyio.sleep(0.05)


async def test_local_sessions_are_mirrored_with_the_seed_shapes(
    server: Server, app: tuple[FactoryAppEmulator, Served]
) -> None:
    emulator, served = app
    served.__enter__()
    created = await server.call("create_session", prompt="hi", title="first")
    sid = created["session"]["id"]
    native = sid.partition(":")[2]
    await server.call("send_message", session_id=sid, text="Hello! How can I help?", role="assistant")
    await server.call("rename_session", session_id=sid, title="renamed")
    await server.call("send_message", session_id=sid, text="more", wait=False)
    await settled(server)
    assert emulator.sessions[native]["title"] == "renamed"
    assert emulator.texts(native) == [("user", "hi"), ("assistant", "Hello! How can I help?"), ("user", "more")]
    chain = emulator.messages[native]
    assert chain[0]["parent"] == "root"
    assert [m["parent"] for m in chain[1:]] == [m["id"] for m in chain[:-1]]
    local_ids = [m["id"] for m in (await server.call("list_messages", session_id=sid))["messages"]]
    assert [m["id"] for m in chain] == local_ids  # the web app holds the local ids
    paths = [p for _, p in emulator.requests]
    assert paths[0] == "/api/sessions/create"
    assert f"/api/sessions/{native}/update-title" in paths
    assert f"/api/sessions/{native}/message/assistant/create" in paths
    assert all(h == f"Bearer {TOKEN}" for h in emulator.auth_headers)


async def test_web_app_down_loses_and_blocks_nothing_then_catches_up(
    server: Server, app: tuple[FactoryAppEmulator, Served], tmp_path: Path
) -> None:
    emulator, served = app
    sid = (await server.call("create_session", prompt="while down", title="t"))["session"]["id"]
    for i in range(3):
        await server.call("send_message", session_id=sid, text=f"reply {i}", role="assistant")
    page = await server.call("list_messages", session_id=sid)
    assert [m["text"] for m in page["messages"]] == ["while down", "reply 0", "reply 1", "reply 2"]

    with anyio.fail_after(20):
        while (await server.mirror.store.mirror_stats(failed_after=1)).failed == 0:
            await server.mirror.idle.wait()
            await anyio.sleep(0.02)
    report = await mirror_checks(settings_for(served.url, tmp_path), server.mirror.store)
    outbox = next(c for c in report if c.component == "mirror: outbox")
    assert "1 pending" in outbox.detail and "cannot reach Factory web app" in outbox.detail
    assert TOKEN not in str(report)

    served.__enter__()  # the web app comes back
    await server.call("send_message", session_id=sid, text="after", wait=False)
    await settled(server)
    native = sid.partition(":")[2]
    assert [t for _, t in emulator.texts(native)] == ["while down", "reply 0", "reply 1", "reply 2", "after"]
    report = await mirror_checks(settings_for(served.url, tmp_path), server.mirror.store)
    assert [c.level for c in report] == ["ok", "ok"] and "0 pending" in report[1].detail


async def test_a_stalled_web_app_never_blocks_local_writes(
    server: Server, app: tuple[FactoryAppEmulator, Served]
) -> None:
    emulator, served = app
    served.__enter__()
    emulator.inject(503, times=100, delay_s=4.0)  # every request hangs 4 s, then fails
    started = time.monotonic()
    sid = (await server.call("create_session", prompt="fast", title="stall"))["session"]["id"]
    for i in range(3):
        await server.call("send_message", session_id=sid, text=f"local {i}", role="assistant")
    page = await server.call("list_messages", session_id=sid)
    elapsed = time.monotonic() - started
    assert elapsed < 4.0, f"local writes waited for the web app ({elapsed:.1f}s)"
    assert [m["text"] for m in page["messages"]] == ["fast", "local 0", "local 1", "local 2"]
    assert emulator.sessions == {}  # nothing reached the web app yet
    emulator.faults.clear()
    await settled(server)
    assert [t for _, t in emulator.texts(sid.partition(":")[2])] == ["fast", "local 0", "local 1", "local 2"]


async def test_failures_and_lost_answers_are_retried_without_duplicates(
    server: Server, app: tuple[FactoryAppEmulator, Served]
) -> None:
    emulator, served = app
    served.__enter__()
    emulator.inject(503, path_contains="/api/sessions/create")
    emulator.inject(500, path_contains="/message/user/create", after_handling=True)  # stored, answer lost
    emulator.inject(429, path_contains="/message/assistant/create", retry_after="0")
    sid = (await server.call("create_session", prompt="q1", title="retry"))["session"]["id"]
    await server.call("send_message", session_id=sid, text="a1", role="assistant")
    await settled(server)
    native = sid.partition(":")[2]
    assert emulator.texts(native) == [("user", "q1"), ("assistant", "a1")]
    creates = [p for m, p in emulator.requests if p == "/api/sessions/create"]
    assert len(creates) == 2  # the 503 and the retry
    assert all(not f.times for f in emulator.faults)


async def test_outbox_survives_a_restart(app: tuple[FactoryAppEmulator, Served], tmp_path: Path, era: str) -> None:
    emulator, served = app
    first = Server(settings_for(served.url, tmp_path), era)
    async with first.client:
        sid = (await first.call("create_session", prompt="before restart"))["session"]["id"]
        with anyio.fail_after(20):
            while (await first.mirror.store.mirror_stats(failed_after=1)).failed == 0:
                await first.mirror.idle.wait()
                await anyio.sleep(0.02)
    served.__enter__()
    second = Server(settings_for(served.url, tmp_path), era)
    async with second.client:
        await settled(second)
        assert emulator.texts(sid.partition(":")[2]) == [("user", "before restart")]
