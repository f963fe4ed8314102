"""Session handles, native ids and opaque cursors.

A handle is ``"<backend>:<native id>"``. Cursors are opaque to clients: URL-safe base64 of a
small JSON object that binds the backend position to the session it came from, so a cursor
from another session (or a made-up one) is rejected with a clear error instead of returning
the wrong page.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import secrets
from binascii import b2a_base64
from collections.abc import Container
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii

from .errors import BadCursor, InvalidArgument, UnknownSession, quote

MAX_CURSOR_CHARS = 4096
"""Longer than any cursor this server hands out; a longer one is refused before decoding."""
MAX_OFFSET = 10_000_000
"""Beyond any message text this server keeps (offsets index into one message's text)."""


def new_native_id() -> str:
    """A random, unguessable local session id: 128 bits, 22 URL-safe characters."""
    return secrets.token_urlsafe(16)


def new_message_id() -> str:
    """A random message id (128 bits)."""
    return "m_" + secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class Handle:
    """A parsed session id."""

    backend: str
    native_id: str

    def __str__(self) -> str:
        return f"{self.backend}:{self.native_id}"

    @property
    def transcript_uri(self) -> str:
        """The Markdown transcript resource."""
        return f"session://{self.backend}/{self.native_id}/transcript"

    @property
    def messages_uri(self) -> str:
        """The JSON messages resource."""
        return f"session://{self.backend}/{self.native_id}/messages"


def count_position(after: str | None) -> int | None:
    """A backend-native position that counts messages (``None`` is the start, 0); None when ``after``
    is not a non-negative integer. Backends raise their own error for that."""
    if after is None:
        return 0
    # only plain decimals: int() would also take "1_0", " 0", "٠", and numbers SQLite cannot hold
    if not (after.isascii() and after.isdigit() and len(after) <= 18):
        return None
    return int(after)


def parse_handle(session_id: str, known: Container[str]) -> Handle:
    """Parse ``backend:native``; unknown shapes and disabled backends are unknown sessions."""
    backend, sep, native = (session_id or "").strip().partition(":")
    if not sep or not native or backend not in known or "/" in native:
        if sep and native and backend and backend not in known:
            raise UnknownSession(session_id) from InvalidArgument(f"backend {quote(backend)} is not enabled")
        raise UnknownSession(session_id)
    return Handle(backend, native)


@functools.lru_cache(maxsize=4096)
def _fingerprint(session_id: str) -> str:
    return hashlib.blake2s(session_id.encode(), digest_size=6).hexdigest()


@functools.lru_cache(maxsize=4096)
def _cursor_head(session_id: str) -> str:
    return '{"s":"' + _fingerprint(session_id) + '"'  # hex digits: nothing to escape


_URLSAFE = bytes.maketrans(b"+/", b"-_")


@functools.lru_cache(maxsize=4096)
def _encoded_head(session_id: str) -> str:
    # '{"s":"<12 hex>","p":' is 24 bytes, a whole number of base64 groups: its encoding is a
    # prefix of every cursor of the session, so a page encodes only each cursor's short tail
    return base64.urlsafe_b64encode((_cursor_head(session_id) + ',"p":').encode()).decode()


def encode_cursor(session_id: str, position: str | None, offset: int = 0) -> str:
    """An opaque cursor: ``position`` is the backend's, ``offset`` skips into the next message's text.

    The JSON is written by hand because a page encodes one cursor per message; the bytes are exactly
    what ``json.dumps(..., separators=(",", ":"))`` gives (a test holds them to it).
    """
    if position is not None and not offset:
        tail = b2a_base64((encode_basestring_ascii(position) + "}").encode(), newline=False)
        return _encoded_head(session_id) + tail.translate(_URLSAFE).rstrip(b"=").decode()
    raw = _cursor_head(session_id)
    if position is not None:
        raw += ',"p":' + encode_basestring_ascii(position)
    if offset:
        raw += f',"o":{int(offset)}'
    return base64.urlsafe_b64encode((raw + "}").encode()).rstrip(b"=").decode()


def decode_cursor(session_id: str, cursor: str) -> tuple[str | None, int]:
    """Back to ``(position, offset)``; raises :class:`BadCursor` on anything else."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise BadCursor("not a cursor of this server")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadCursor("not a cursor of this server") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("s"), str):  # pyright: ignore[reportUnknownMemberType]
        raise BadCursor("not a cursor of this server")
    if payload.get("s") != _fingerprint(session_id):  # pyright: ignore[reportUnknownMemberType]
        raise BadCursor("it belongs to another session")
    position = payload.get("p")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    offset = payload.get("o", 0)  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    if (
        (position is not None and not isinstance(position, str))
        or not isinstance(offset, int)
        or isinstance(offset, bool)
        or not 0 <= offset <= MAX_OFFSET
    ):
        raise BadCursor("malformed")
    return position, offset


def encode_page_token(data: dict[str, object]) -> str:
    """Opaque token for session list pages."""
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_page_token(token: str) -> dict[str, object]:
    """Inverse of :func:`encode_page_token`; raises :class:`InvalidArgument`."""
    bad = InvalidArgument("bad cursor for list_sessions: pass next_cursor from a previous call")
    if len(token) > MAX_CURSOR_CHARS:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad from None
    # every value is a backend's own page token: anything else is forged, not "start over"
    if not isinstance(data, dict) or not data or not all(isinstance(v, str) for v in data.values()):  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType]
        raise bad
    return data  # pyright: ignore[reportUnknownVariableType]
