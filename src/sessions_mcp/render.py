"""Readable renderings: Markdown transcripts and the text content of tool results."""

from __future__ import annotations

import json
from collections.abc import Iterable

from .models import Message, MessageJSON, Pending, PlanPart, Session, ToolCallPart, ToolResultPart

_MAX_TOOL_IO = 2000


def session_line(s: Session) -> str:
    """One line about a session."""
    title = f' "{s.title}"' if s.title else ""
    err = f" error: {s.error}" if s.error else ""
    return f"{s.id}{title} [{s.status.value}] {s.message_count} messages, updated {s.updated_at.isoformat()}{err}"


def pending_text(session_id: str, p: Pending) -> str:
    """What the agent waits for and how to answer it."""
    lines = [f"needs input ({p.kind}): {p.text}"]
    if p.options:
        lines.append("answer with send_message(session_id=" + repr(session_id) + ", text=<an option id or label>):")
        lines.extend(f"- {o.id}: {o.label} ({o.kind})" for o in p.options)
    else:
        lines.append(f"answer with send_message(session_id={session_id!r}, text=<your answer>)")
    return "\n".join(lines)


def message_block(m: MessageJSON) -> str:
    """A message (in its JSON form) as plain text for a tool result."""
    at = m["created_at"]
    head = f"[{m['role']}] {m['id']} {at[:-1] + '+00:00' if at.endswith('Z') else at}"
    body = m["text"]
    if m["truncated"]:
        shown_end = m["text_offset"] + len(body)
        body += (
            f"\n… [cut: characters {m['text_offset']:,}-{shown_end:,} of {m['text_length'] or 0:,} shown; call "
            f"list_messages(session_id={m['session_id']!r}, after={m['cursor']!r}) to read the rest]"
        )
    return f"{head}\n{body}"


def messages_text(messages: Iterable[MessageJSON]) -> str:
    """Several messages (in their JSON form) as plain text."""
    return "\n\n".join(message_block(m) for m in messages)


def transcript_markdown(session: Session, messages: Iterable[Message]) -> str:
    """The Markdown transcript resource."""
    lines = [f"# {session.title or session.id}", ""]
    lines.append(f"- id: `{session.id}`")
    lines.append(f"- status: {session.status.value}" + (f" ({session.error})" if session.error else ""))
    lines.append(f"- created: {session.created_at.isoformat()}  updated: {session.updated_at.isoformat()}")
    lines.append("")
    for m in messages:
        lines.append(f"## {m.role} · {m.created_at.isoformat()}")
        lines.append("")
        for part in m.parts:
            if isinstance(part, ToolCallPart):
                args = json.dumps(part.input, ensure_ascii=False, default=str)[:200].replace("\n", " ")
                status = f" ({part.status})" if part.status else ""
                lines.append(f"**tool call** `{part.title or part.name}`{status} `{args}`")
            elif isinstance(part, ToolResultPart):
                label = "tool error" if part.is_error else "tool result"
                lines.append(f"**{label}**\n\n```\n{part.output[:_MAX_TOOL_IO]}\n```")
            elif isinstance(part, PlanPart):
                lines.append("**plan**\n\n" + "\n".join(f"- [{e.status}] {e.text}" for e in part.entries))
            elif part.type == "text":
                lines.append(part.text)
            elif part.type == "thinking":
                lines.append(f"> _thinking:_ {part.text}" if part.text else "> _thinking (redacted)_")
            elif part.type == "attachment":
                lines.append(f"_attachment: {part.name or part.media_type}_")
            else:
                lines.append(f"_({part.backend_type or 'unknown'} block)_")
            lines.append("")
        if m.truncated:
            lines.append(f"_… cut; read the rest with list_messages(after={m.cursor!r})_")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
