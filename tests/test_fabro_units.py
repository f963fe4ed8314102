"""Fabro backend pieces that need no server: timestamps, turn mapping, JWT minting, key loading,
request bodies and the error mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from jwt.utils import base64url_decode

from sessions_mcp._http import HttpFailure
from sessions_mcp.backends.fabro.auth import BearerAuth, JwtMinter, build_auth, load_private_key
from sessions_mcp.backends.fabro.client import map_fabro_error
from sessions_mcp.backends.fabro.mapping import parse_position, turns_to_messages
from sessions_mcp.backends.fabro.wire import (
    CreateSessionRequest,
    SendMessageRequest,
    SessionDetail,
    parse_time,
)
from sessions_mcp.errors import AuthError, BackendError, BadCursor, ConfigError, Unavailable, UnknownSession
from sessions_mcp.models import RawPart, TextPart, ToolCallPart, ToolResultPart
from sessions_mcp.settings import FabroSettings

from .emulators.fabro import new_keypair

SID = "a1b2c3d4-e5f6-7890-abcd-ef1234567890"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-06T16:00:00Z", datetime(2026, 3, 6, 16, 0, 0, tzinfo=UTC)),
        ("2026-03-06T16:00:00.1Z", datetime(2026, 3, 6, 16, 0, 0, 100000, tzinfo=UTC)),
        ("2026-03-06T16:00:00.123Z", datetime(2026, 3, 6, 16, 0, 0, 123000, tzinfo=UTC)),
        ("2026-03-06T16:00:00.123456Z", datetime(2026, 3, 6, 16, 0, 0, 123456, tzinfo=UTC)),
        ("2026-03-06T16:00:00.123456789Z", datetime(2026, 3, 6, 16, 0, 0, 123456, tzinfo=UTC)),
        ("2026-03-06T18:00:00.123456789+02:00", datetime(2026, 3, 6, 16, 0, 0, 123456, tzinfo=UTC)),
        ("2026-03-06T16:00:00.5z", datetime(2026, 3, 6, 16, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_rfc3339_with_up_to_nine_fraction_digits(text: str, expected: datetime) -> None:
    got = parse_time(text)
    assert got == expected and got.tzinfo is not None and got.utcoffset() == UTC.utcoffset(None)


def test_bad_timestamp_is_rejected() -> None:
    with pytest.raises(ValueError):
        parse_time("yesterday")


def _detail(turns: list[dict[str, object]]) -> SessionDetail:
    return SessionDetail.model_validate(
        {
            "id": SID, "title": "t", "model": {"id": "m"}, "created_at": "2026-03-06T16:00:00Z",
            "updated_at": "2026-03-06T16:00:00Z", "turns": turns,
        }
    )  # fmt: skip


def test_turns_map_to_messages_with_stable_ids_and_positions() -> None:
    turns: list[dict[str, object]] = [
        {"kind": "user", "content": "read it", "created_at": "2026-03-06T16:00:00Z"},
        {
            "kind": "tool",
            "created_at": "2026-03-06T16:00:01.5Z",
            "tools": [
                {
                    "id": "toolu_1",
                    "tool_name": "read_file",
                    "input": '{"path": "a.py"}',
                    "result": "x=1",
                    "is_error": False,
                    "duration_ms": 12,
                },
                {"id": "toolu_2", "tool_name": "bash", "input": "not json", "result": "boom", "is_error": True},
            ],
        },
        {"kind": "assistant", "content": "done", "created_at": "2026-03-06T16:00:02Z"},
        {"kind": "thinking", "text": "hm", "created_at": "2026-03-06T16:00:03Z"},
    ]
    d = _detail(turns)
    msgs = turns_to_messages(SID, d.turns, d.created_at)
    assert [(m.id, m.role, m.position) for m in msgs] == [
        (f"{SID}:0", "user", "1"),
        (f"{SID}:1:call", "assistant", "2"),
        (f"{SID}:1:result", "tool", "3"),
        (f"{SID}:2", "assistant", "4"),
        (f"{SID}:3", "assistant", "5"),
    ]
    assert msgs[0].parts == [TextPart(text="read it")]
    assert msgs[1].parts == [
        ToolCallPart(id="toolu_1", name="read_file", input={"path": "a.py"}),
        ToolCallPart(id="toolu_2", name="bash", input="not json"),
    ]
    assert msgs[2].parts == [
        ToolResultPart(tool_call_id="toolu_1", output="x=1", is_error=False, duration_ms=12),
        ToolResultPart(tool_call_id="toolu_2", output="boom", is_error=True, duration_ms=None),
    ]
    assert msgs[4].parts == [RawPart(backend_type="fabro.thinking", data={"text": "hm"})]
    # appending a turn never changes earlier ids or positions
    again = turns_to_messages(SID, _detail([*turns, turns[0]]).turns, d.created_at)
    assert [(m.id, m.position) for m in again[:5]] == [(m.id, m.position) for m in msgs]


def test_positions_are_validated() -> None:
    assert parse_position(None) == 0 and parse_position("7") == 7
    for bad in ("x", "-1", "1.5"):
        with pytest.raises(BadCursor):
            parse_position(bad)


def test_request_bodies_omit_unset_optional_fields() -> None:
    assert CreateSessionRequest(content="hi").body() == {"content": "hi"}
    assert CreateSessionRequest(content="hi", model="m", system="s").body() == {
        "content": "hi", "model": "m", "system": "s",
    }  # fmt: skip
    assert SendMessageRequest(content="x").body() == {"content": "x"}
    assert "null" not in json.dumps(CreateSessionRequest(content="hi", system=None).body())


def test_jwt_is_eddsa_with_integer_times_and_verifies_like_fabro() -> None:
    pem, public = new_keypair()
    minter = JwtMinter(load_private_key(pem), subject="https://github.com/alice", ttl_s=30)
    token = minter.mint(now=1_800_000_000.7)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    raw = json.loads(base64url_decode(token.split(".")[1]))
    assert isinstance(raw["iat"], int) and isinstance(raw["exp"], int)
    assert raw["exp"] == 1_800_000_030 and raw["iat"] <= 1_800_000_000
    claims = jwt.decode(
        token, public, algorithms=["EdDSA"], issuer="fabro-web", options={"verify_exp": False, "verify_iat": False}
    )
    assert claims["sub"] == "https://github.com/alice"
    assert minter.mint() != minter.mint(now=1.0)  # minted per request


def test_private_key_from_path_and_clear_errors(tmp_path: Path) -> None:
    pem, _ = new_keypair()
    f = tmp_path / "key.pem"
    f.write_text(pem)
    assert load_private_key(str(f)) is not None
    import base64

    assert load_private_key(base64.b64encode(pem.encode()).decode()) is not None  # fabro-web's env form
    with pytest.raises(ConfigError, match=r"JWT_PRIVATE_KEY.*readable file"):
        load_private_key(str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="could not be loaded"):
        load_private_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        .decode()
    )
    with pytest.raises(ConfigError, match="Ed25519") as info:
        load_private_key(ec_pem)
    assert "BEGIN" not in str(info.value)  # the key never appears in a message


def test_build_auth_choices() -> None:
    pem, _ = new_keypair()
    assert build_auth(FabroSettings()) is None
    tok = build_auth(FabroSettings(token="t0ken-value"))  # pyright: ignore[reportArgumentType]
    assert isinstance(tok, BearerAuth) and tok.header() == "Bearer t0ken-value"
    with pytest.raises(ConfigError, match="keep only one"):
        build_auth(FabroSettings(token="x", jwt_private_key=pem))  # pyright: ignore[reportArgumentType]
    with pytest.raises(ConfigError, match="JWT_SUBJECT"):
        build_auth(FabroSettings(jwt_private_key=pem))  # pyright: ignore[reportArgumentType]
    jwt_auth = build_auth(FabroSettings(jwt_private_key=pem, jwt_subject="https://github.com/a"))  # pyright: ignore[reportArgumentType]
    assert jwt_auth is not None and jwt_auth.header().startswith("Bearer ey")


def _failure(status: int, body: object = None, detail: str = "", subject: str | None = None) -> HttpFailure:
    return HttpFailure(
        status=status, method="GET", path="/api/v1/sessions/x", detail=detail, subject=subject, body=body
    )


def test_error_bodies_map_to_the_error_tree() -> None:
    body = {"errors": [{"status": "404", "title": "Not Found", "detail": "Session not found."}]}
    assert isinstance(map_fabro_error(_failure(404, body, subject="fabro:x")), UnknownSession)
    no_api = map_fabro_error(_failure(404, body))
    assert isinstance(no_api, BackendError) and "API_PREFIX" in str(no_api)
    e401 = map_fabro_error(
        _failure(401, {"errors": [{"status": "401", "title": "Unauthorized", "detail": "Authentication required."}]})
    )
    assert isinstance(e401, AuthError) and "Authentication required." in str(e401) and "clock" in str(e401)
    e403 = map_fabro_error(_failure(403, None, "Access denied."))
    assert isinstance(e403, AuthError) and "allowed_usernames" in str(e403) and "Access denied." in str(e403)
    plain = map_fabro_error(_failure(400, None, "Failed to parse the request body as JSON"))
    assert type(plain) is BackendError and "Failed to parse" in str(plain)
    for status in (500, 502, 410):
        assert isinstance(map_fabro_error(_failure(status, None, "x")), Unavailable)
