"""The Fabro backend against the emulator over real HTTP: the stream-before-POST pattern, progress,
drafts, pagination, tool turns, both path prefixes, static tokens, stream lifetime and ``doctor``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from mcp import Client

from sessions_mcp.backends.fabro import FabroBackend, FabroClient, create_backend
from sessions_mcp.backends.requests import CreateRequest, MessageQuery, SendRequest
from sessions_mcp.server import build_server
from sessions_mcp.settings import FabroSettings, load_settings
from sessions_mcp.store.sqlite import SqliteStore

from .conftest import client_for
from .emulators.fabro import FabroEmulator, new_keypair, running

pytestmark = pytest.mark.anyio
USER = "backend-tester"
TOKEN = "static-test-token-123"


@pytest.fixture
def keypair() -> tuple[str, Any]:
    return new_keypair()


@pytest.fixture
def emu(keypair: tuple[str, Any]) -> Iterator[FabroEmulator]:
    with running(keypair[1], (USER,)) as e:
        yield e


def fabro_cfg(emu: FabroEmulator, pem: str, **extra: Any) -> dict[str, Any]:
    return {"base_url": emu.url, "jwt_private_key": pem, "jwt_subject": f"https://github.com/{USER}", **extra}


@asynccontextmanager
async def served(tmp_path: Path, fabro: dict[str, Any]) -> AsyncIterator[Client]:
    settings = load_settings(None, backends=["fabro"], local={"db": str(tmp_path / "s.db")}, fabro=fabro)
    async with client_for(build_server(settings), "auto") as c:
        yield c


async def call(c: Client, tool: str, progress: Any = None, **args: Any) -> dict[str, Any]:
    r = await c.call_tool(tool, args, progress_callback=progress)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


def texts(result: dict[str, Any]) -> list[str]:
    return [m["text"] for m in result["messages"]]


@asynccontextmanager
async def direct(emu: FabroEmulator, tmp_path: Path, pem: str, linger_s: float) -> AsyncIterator[FabroBackend]:
    """A started backend on its own task group (no MCP layer)."""
    settings = FabroSettings(**fabro_cfg(emu, pem))  # pyright: ignore[reportArgumentType]
    store = SqliteStore(str(tmp_path / "d.db"))
    be = FabroBackend(settings, store, client=FabroClient.from_settings(settings), linger_s=linger_s)
    async with anyio.create_task_group() as tg:
        tg_: TaskGroup = tg
        await be.start(tg_)
        try:
            yield be
        finally:
            await be.aclose()
            await store.close()
            tg.cancel_scope.cancel()


async def test_the_reply_streams_as_progress_and_arrives_once(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    progress: list[str] = []

    async def on_progress(_p: float, _t: float | None, message: str | None) -> None:
        progress.append(message or "")
        if (message or "").startswith("echo"):
            emu.release_agent()

    async with served(tmp_path, fabro_cfg(emu, keypair[0])) as c:
        first = await call(c, "create_session", prompt="one", timeout_s=10)
        sid = first["session"]["id"]
        fid = sid.partition(":")[2]
        assert first["status"] == "idle" and texts(first) == ["one", "echo: one"]
        emu.hold_agent()
        mark = len(emu.requests)
        with anyio.fail_after(15):
            sent = await call(c, "send_message", on_progress, session_id=sid, text="two", wait=True, timeout_s=10)
        assert sent["status"] == "idle" and texts(sent) == ["two", "echo: two"]
        assert ("POST", f"/api/v1/sessions/{fid}/messages") in [(m, p) for m, p, _ in emu.requests[mark:]]
        assert [p for p in progress if p.startswith("echo")][-1] == "echo: two"
        # nothing missed, nothing twice; the cursor reads only what is new
        page = await call(c, "list_messages", session_id=sid)
        assert texts(page) == ["one", "echo: one", "two", "echo: two"]
        assert [m["id"] for m in page["messages"]] == [f"{fid}:{i}" for i in range(4)]
        assert (await call(c, "list_messages", session_id=sid, after=sent["cursor"]))["messages"] == []


async def test_the_send_stream_is_opened_before_the_post(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with direct(emu, tmp_path, keypair[0], linger_s=0.01) as be:
        created = await be.create_session(CreateRequest(principal="p", prompt="a"))
        fid = created.session.native_id
        page = await be.list_messages(MessageQuery("p", fid, after=None, limit=10))
        with anyio.fail_after(10):
            while len(page.items) < 2:  # the create's reply; its stream lingers only 10 ms
                page = await be.list_messages(MessageQuery("p", fid, after=None, limit=10))
        while emu.subscriber_count():
            await anyio.sleep(0.01)
        mark = len(emu.requests)
        msg = await be.send_message(SendRequest("p", fid, "b", "user"))
        assert msg.id == f"{fid}:2" and msg.text == "b" and msg.position == "3"
        order = [(m, p) for m, p, _ in emu.requests[mark:]]
        events = order.index(("GET", f"/api/v1/sessions/{fid}/events"))
        post = order.index(("POST", f"/api/v1/sessions/{fid}/messages"))
        assert events < post


async def test_streams_stay_open_while_held_and_close_after_the_linger(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with direct(emu, tmp_path, keypair[0], linger_s=0.05) as be:
        created = await be.create_session(CreateRequest(principal="p", prompt="hold"))
        fid = created.session.native_id
        async with be.watch("p", fid) as w:
            with anyio.fail_after(10):
                while (await be.get_session("p", fid)).status.value != "idle":
                    await w.next(5)
            assert emu.subscriber_count() == 1  # like the real server: open after done
        with anyio.fail_after(10):
            while emu.subscriber_count():
                await anyio.sleep(0.01)
        assert not be.live or fid not in be.live.streams


async def test_tool_turns_become_a_call_and_a_result(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    emu.faults.tool_turns = True
    async with served(tmp_path, fabro_cfg(emu, keypair[0])) as c:
        r = await call(c, "create_session", prompt="use a tool", timeout_s=10)
        roles = [(m["role"], m["parts"][0]["type"]) for m in r["messages"]]
        assert roles == [("user", "text"), ("assistant", "tool_call"), ("tool", "tool_result"), ("assistant", "text")]
        call_part = r["messages"][1]["parts"][0]
        result_part = r["messages"][2]["parts"][0]
        assert call_part["name"] == "read_file" and call_part["input"] == {"path": "README.md"}
        assert result_part["tool_call_id"] == call_part["id"] and result_part["duration_ms"] == 7
        assert r["status"] == "idle"


async def test_drafts_carry_title_model_and_system_into_the_first_message(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with served(tmp_path, fabro_cfg(emu, keypair[0])) as c:
        d = await call(c, "create_session", title="my draft", model="claude-opus-4-6", system="be brief")
        sid = d["session"]["id"]
        assert sid.startswith("fabro:draft-") and d["status"] == "idle" and not emu.sessions
        listed = await call(c, "list_sessions", backend="fabro")
        assert [s["id"] for s in listed["sessions"]] == [sid]
        sent = await call(c, "send_message", session_id=sid, text="start now", timeout_s=10)
        assert texts(sent) == ["start now", "echo: start now"]
        assert emu.bodies[-1] == {"content": "start now", "model": "claude-opus-4-6", "system": "be brief"}
        (fid,) = emu.sessions
        got = await call(c, "get_session", session_id=sid)
        assert got["id"] == sid and got["title"] == "my draft" and got["model"] == "claude-opus-4-6"
        again = await call(c, "send_message", session_id=sid, text="more", timeout_s=10)
        assert texts(again) == ["more", "echo: more"] and len(emu.sessions) == 1
        via_fabro = await call(c, "list_messages", session_id=f"fabro:{fid}")
        assert texts(via_fabro) == ["start now", "echo: start now", "more", "echo: more"]
        listed = await call(c, "list_sessions", backend="fabro")
        assert [s["id"] for s in listed["sessions"]] == [f"fabro:{fid}"]


async def test_bodies_never_carry_null(emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]) -> None:
    async with served(tmp_path, fabro_cfg(emu, keypair[0])) as c:
        await call(c, "create_session", prompt="plain", wait=False)
    assert emu.bodies == [{"content": "plain"}]


async def test_pages_of_sessions_through_opaque_cursors(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with served(tmp_path, fabro_cfg(emu, keypair[0])) as c:
        ids = [(await call(c, "create_session", prompt=f"s{i}", timeout_s=10))["session"]["id"] for i in range(5)]
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            args: dict[str, Any] = {"backend": "fabro", "limit": 2}
            if cursor:
                args["cursor"] = cursor
            page = await call(c, "list_sessions", **args)
            assert len(page["sessions"]) <= 2
            seen += [s["id"] for s in page["sessions"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == list(reversed(ids))  # newest first, each once
        assert any("page[offset]=2" in p or p == "/api/v1/sessions" for _, p, _ in emu.requests)
        found = await call(c, "list_sessions", backend="fabro", query="S3")
        assert [s["id"] for s in found["sessions"]] == [ids[3]]
        assert all(s["status"] == "idle" for s in (await call(c, "list_sessions", status="idle"))["sessions"])


async def test_march_builds_without_prefix_and_a_static_token(tmp_path: Path) -> None:
    with FabroEmulator(prefix="", token=TOKEN) as emu:
        async with served(tmp_path, {"base_url": emu.url, "api_prefix": "", "token": TOKEN}) as c:
            r = await call(c, "create_session", prompt="march", timeout_s=10)
            assert texts(r) == ["march", "echo: march"]
        assert all(not p.startswith("/api/v1") for _, p, _ in emu.requests)
        async with served(tmp_path, {"base_url": emu.url, "api_prefix": "", "token": "wrong-token-456"}) as c:
            bad = await c.call_tool("list_sessions", {"backend": "fabro"})
            assert bad.is_error and "401" in bad.content[0].text  # type: ignore[union-attr]
            assert "wrong-token-456" not in bad.content[0].text  # type: ignore[union-attr]
        assert emu.violations == [], emu.violations


async def test_wrong_prefix_says_which_setting_to_change(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with served(tmp_path, fabro_cfg(emu, keypair[0], api_prefix="")) as c:
        r = await c.call_tool("list_sessions", {"backend": "fabro"})
        assert r.is_error and "API_PREFIX" in r.content[0].text  # type: ignore[union-attr]


async def test_doctor_checks(emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]) -> None:
    store = SqliteStore(str(tmp_path / "doc.db"))
    good = create_backend(load_settings(None, backends=["fabro"], fabro=fabro_cfg(emu, keypair[0])), store)
    checks = await good.diagnose()
    assert [c.level for c in checks] == ["ok", "ok", "ok"], checks
    await good.aclose()
    bad_key = create_backend(
        load_settings(None, backends=["fabro"], fabro=fabro_cfg(emu, "/nonexistent/key.pem")), store
    )
    (check,) = await bad_key.diagnose()
    assert check.level == "fail" and "JWT_PRIVATE_KEY" in check.detail
    empty = create_backend(load_settings(None, backends=["fabro"]), store)
    (check,) = await empty.diagnose()
    assert check.level == "fail" and "BASE_URL" in check.detail
    down = create_backend(
        load_settings(None, backends=["fabro"], fabro={"base_url": "http://127.0.0.1:9", "timeout_s": 1}), store
    )
    checks = await down.diagnose()
    assert checks[-1].level == "fail" and "cannot reach Fabro" in checks[-1].detail
    assert checks[1].level == "warn"  # no credentials at all
    await down.aclose()
    await store.close()


def _certs(tmp_path: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (CN=alice), as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def issue(subject: str, key: Any, issuer_key: Any, issuer: str, *, ca: bool = False, ip: bool = False) -> Any:
        b = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ip:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        return b.sign(issuer_key, hashes.SHA256())

    out: dict[str, str] = {}

    def write(label: str, cert: Any, key: Any) -> None:
        (tmp_path / f"{label}.crt").write_bytes(cert.public_bytes(Encoding.PEM))
        (tmp_path / f"{label}.key").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        out[label] = str(tmp_path / f"{label}.crt")
        out[f"{label}_key"] = str(tmp_path / f"{label}.key")

    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    write("ca", issue("test ca", ca_key, ca_key, "test ca", ca=True), ca_key)
    write("server", issue("127.0.0.1", server_key, ca_key, "test ca", ip=True), server_key)
    write("client", issue("alice", client_key, ca_key, "test ca"), client_key)
    return out


async def test_mutual_tls(tmp_path: Path) -> None:
    import ssl

    c = _certs(tmp_path)
    tls = {
        "ssl_certfile": c["server"], "ssl_keyfile": c["server_key"], "ssl_ca_certs": c["ca"],
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }  # fmt: skip
    with FabroEmulator(tls=tls, tls_identity="alice") as emu:
        cfg = {"base_url": emu.url, "client_cert": c["client"], "client_key": c["client_key"], "ca_cert": c["ca"]}
        async with served(tmp_path, cfg) as client:
            r = await call(client, "create_session", prompt="over tls", timeout_s=10)
            assert texts(r) == ["over tls", "echo: over tls"]
        async with served(tmp_path, {"base_url": emu.url, "ca_cert": c["ca"], "timeout_s": 2}) as client:
            bad = await client.call_tool("list_sessions", {"backend": "fabro"})
            assert bad.is_error and "cannot reach Fabro" in bad.content[0].text  # type: ignore[union-attr]
        assert emu.violations == [], emu.violations


async def test_replies_that_finish_before_the_wait_starts_are_not_missed(
    keypair: tuple[str, Any], tmp_path: Path
) -> None:
    with FabroEmulator(public_key=keypair[1], allowed_usernames=(USER,), chunk_delay_s=0) as emu:
        async with served(tmp_path, fabro_cfg(emu, keypair[0])) as c:
            sid = (await call(c, "create_session", prompt="fast", timeout_s=10))["session"]["id"]
            with anyio.fail_after(30):
                for i in range(10):
                    r = await call(c, "send_message", session_id=sid, text=f"m{i}", timeout_s=10)
                    assert r["status"] == "idle" and texts(r) == [f"m{i}", f"echo: m{i}"]
        assert emu.violations == [], emu.violations


async def test_long_poll_wakes_on_the_event_not_on_a_timer(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with served(tmp_path, fabro_cfg(emu, keypair[0])) as c:
        first = await call(c, "create_session", prompt="a", timeout_s=10)
        sid = first["session"]["id"]
        emu.hold_agent()
        sent = await call(c, "send_message", session_id=sid, text="b", wait=False)
        assert sent["status"] == "running"
        got: dict[str, Any] = {}

        async def poll() -> None:
            got.update(await call(c, "list_messages", session_id=sid, after=sent["cursor"], wait_s=30))

        with anyio.fail_after(10):  # far below wait_s: only the event can end the poll this early
            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                while emu.subscriber_count() == 0:
                    await anyio.sleep(0.01)
                emu.release_agent()
        assert texts(got) == ["echo: b"] and got["status"] in ("idle", "running")
