"""Cursors and handles: the wire format is a compatibility promise (clients keep cursors across upgrades)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from sessions_mcp.errors import BadCursor
from sessions_mcp.ids import decode_cursor, encode_cursor

POSITIONS = ["12", "", "0", 'née/"quoted"\\back\u2028slash', "🙂 emoji", "a" * 300, None]


def reference_cursor(session_id: str, position: str | None, offset: int) -> str:
    """The format as first shipped: compact JSON of {s, p?, o?}, URL-safe base64 without padding."""
    payload: dict[str, object] = {"s": hashlib.blake2s(session_id.encode(), digest_size=6).hexdigest()}
    if position is not None:
        payload["p"] = position
    if offset:
        payload["o"] = offset
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("offset", [0, 1, 123_456])
def test_cursor_bytes_match_the_shipped_format_and_round_trip(position: str | None, offset: int) -> None:
    sid = "local:wO1y65dyXR7f0ISAzwDLGA"
    cursor = encode_cursor(sid, position, offset)
    assert cursor == reference_cursor(sid, position, offset)
    assert decode_cursor(sid, cursor) == (position, offset)


def test_cursor_of_another_session_is_refused() -> None:
    cursor = encode_cursor("local:aaaa", "5")
    with pytest.raises(BadCursor, match="another session"):
        decode_cursor("local:bbbb", cursor)


@pytest.mark.parametrize("junk", ["", "!!!", base64.urlsafe_b64encode(b"[1,2]").decode(), "eyJzIjoxfQ"])
def test_malformed_cursors_are_refused(junk: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor("local:aaaa", junk)
