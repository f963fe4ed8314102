"""Turning backend records into public models: sessions, and runs of messages cut to ``max_chars``."""

from __future__ import annotations

from collections.abc import Sequence

from . import limits
from .ids import encode_cursor
from .models import MessageJSON, Session, SessionRecord, StoredMessage


def public_session(backend: str, rec: SessionRecord) -> Session:
    """A backend record as the public model."""
    native = rec.native_id
    return Session(
        id=f"{backend}:{native}",
        backend=backend,
        title=limits.clip(rec.title, limits.TITLE),
        status=rec.status,
        error=rec.error,
        created_at=rec.created_at,
        updated_at=rec.updated_at,
        message_count=rec.message_count,
        transcript_uri=f"session://{backend}/{native}/transcript",
        messages_uri=f"session://{backend}/{native}/messages",
        model=limits.clip(rec.model, limits.MODEL),
        agent=limits.clip(rec.agent, limits.AGENT),
        pending=rec.pending,
    )


def fit(
    session_id: str,
    items: Sequence[StoredMessage],
    *,
    start: str | None,
    offset: int,
    max_chars: int,
) -> tuple[list[MessageJSON], str, bool]:
    """Cut a run of messages to ``max_chars`` of text.

    Returns the public messages (in JSON form), the cursor after what was returned, and whether
    anything was held back. A message that does not fit is either left for the next page
    (when others came before it) or cut, with a cursor that points inside it.
    """
    budget = max_chars
    position = start
    out: list[MessageJSON] = []
    for i, m in enumerate(items):
        skip = offset if i == 0 else 0
        full = m.text
        rest = full[skip:]
        if len(rest) <= budget:
            out.append(
                {
                    "id": m.id, "session_id": session_id, "role": m.role, "text": rest,
                    "parts": m.json_parts if skip == 0 else [{"type": "text", "text": rest}],
                    "created_at": m.created_iso, "truncated": skip > 0, "cursor": encode_cursor(session_id, m.position),
                    "text_offset": skip, "text_length": len(full) if skip else None,
                }
            )  # fmt: skip
            budget -= len(rest)
            position = m.position
            continue
        if out:
            return out, encode_cursor(session_id, position), True
        piece = rest[: max(budget, 1)]
        resume = encode_cursor(session_id, position, skip + len(piece))
        out.append(
            {
                "id": m.id, "session_id": session_id, "role": m.role, "text": piece,
                "parts": [{"type": "text", "text": piece}], "created_at": m.created_iso, "truncated": True,
                "cursor": resume, "text_offset": skip, "text_length": len(full),
            }
        )  # fmt: skip
        return out, resume, True
    return out, encode_cursor(session_id, position, offset if not out else 0), False
