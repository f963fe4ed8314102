"""Factory v0 wire types to neutral models: statuses, content blocks, timestamps.

Content blocks (``text | thinking | redacted_thinking | tool_use | tool_result | image |
document``, camelCase keys) become neutral parts; a block this module does not recognise, or a
known block of an unexpected shape, is kept whole as a :class:`~sessions_mcp.models.RawPart`, so
nothing the API returned is dropped from a message.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from ...models import (
    AttachmentPart,
    Part,
    RawPart,
    Role,
    Status,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
)

INLINE_DATA_MAX = 256 * 1024
"""Base64 characters of an image/document kept inline; larger data is replaced by a note."""

_IDLE = {"idle", "completed", "complete", "done", "stopped", "interrupted"}
_FAILED = {"failed", "error", "errored"}
_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "tool": "tool", "system": "system"}


def from_ms(ms: int | float | None) -> datetime:
    """Unix milliseconds to an aware UTC datetime (the epoch when missing)."""
    return datetime.fromtimestamp((ms or 0) / 1000, tz=UTC)


def wire_status(status: str | None) -> Status:
    """``idle`` stays idle; ``pending``/``running`` (and anything unknown) are running."""
    s = (status or "").lower()
    if s in _IDLE:
        return Status.IDLE
    if s in _FAILED:
        return Status.FAILED
    return Status.RUNNING


def role(value: str) -> Role:
    """The neutral role (an unknown role reads as ``system``)."""
    return _ROLES.get(value.lower(), "system")


def _as_text(value: Any) -> str | None:
    """Text of a tool result's ``content``: a string, or text blocks joined."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        bits: list[str] = []
        for item in cast(list[Any], value):
            if isinstance(item, str):
                bits.append(item)
            elif isinstance(item, dict) and cast(dict[str, Any], item).get("type") == "text":
                bits.append(str(cast(dict[str, Any], item).get("text", "")))
            else:
                return None  # not only text: keep the whole block raw
        return "\n".join(bits)
    return None


def _attachment(block: dict[str, Any]) -> AttachmentPart | None:
    source_any = block.get("source")
    source: dict[str, Any] = cast(dict[str, Any], source_any) if isinstance(source_any, dict) else block
    media = source.get("mediaType") or source.get("media_type") or block.get("mediaType")
    data = source.get("data")
    url = source.get("url")
    name = block.get("name") or block.get("title") or block.get("path")
    if data is not None and not isinstance(data, str):
        return None
    if url is not None and not isinstance(url, str):
        return None
    default_media = "image/*" if block.get("type") == "image" else "application/octet-stream"
    keep = data if data and len(data) <= INLINE_DATA_MAX else None
    return AttachmentPart(
        media_type=str(media or default_media),
        name=str(name) if name else None,
        url=url,
        data_b64=keep,
    )


def block_to_part(block: Any) -> Part:
    """One content block as a neutral part (``RawPart`` when unknown or malformed)."""
    if isinstance(block, str):
        return TextPart(text=block)
    if not isinstance(block, dict):
        return RawPart(backend_type=type(block).__name__, data={"value": block})
    b = cast(dict[str, Any], block)
    kind = str(b.get("type", ""))
    try:
        match kind:
            case "text" if isinstance(b.get("text"), str):
                return TextPart(text=b["text"])
            case "thinking" | "reasoning" if isinstance(b.get("thinking", b.get("text", "")), str):
                return ThinkingPart(text=b.get("thinking", b.get("text", "")))
            case "redacted_thinking":
                return ThinkingPart(text="", redacted=True)
            case "tool_use" if isinstance(b.get("name"), str):
                return ToolCallPart(id=str(b.get("id", "")), name=b["name"], input=b.get("input"))
            case "tool_result":
                out = _as_text(b.get("content", b.get("text")))
                if out is not None:
                    return ToolResultPart(
                        tool_call_id=str(b.get("toolUseId", b.get("tool_use_id", ""))),
                        output=out,
                        is_error=bool(b.get("isError", b.get("is_error", False))),
                    )
            case "image" | "document" | "file":
                att = _attachment(b)
                if att is not None:
                    return att
            case _:
                pass
    except ValueError:
        pass
    return RawPart(backend_type=kind, data=b)


def content_to_parts(content: list[dict[str, Any]] | str) -> list[Part]:
    """A message's ``content`` (a list of blocks, or plain text) as neutral parts."""
    if isinstance(content, str):
        return [TextPart(text=content)] if content else []
    return [block_to_part(b) for b in content]
