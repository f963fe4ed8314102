"""Resources: per-session Markdown transcript and JSON messages, and the sessions index."""

import json

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from .errors import SessionsError, UnknownSession, UserError, quote
from .models import Message, Session
from .principal import current_principal
from .render import transcript_markdown
from .service import SessionService

RESOURCE_MESSAGES = 1000
"""Most messages a resource read returns; list_messages pages through longer sessions."""
RESOURCE_CHARS = 400_000


async def _load(service: SessionService, backend: str, native_id: str) -> tuple[Session, list[Message], bool]:
    session_id = f"{backend}:{native_id}"
    principal = current_principal()
    try:
        session = await service.get_session(principal, session_id)
        messages: list[Message] = []
        after: str | None = None
        more = True
        while more and len(messages) < RESOURCE_MESSAGES:
            page = await service.list_messages(
                principal, session_id=session_id, after=after, limit=200, roles=None, wait_s=0,
                max_chars=RESOURCE_CHARS,
            )  # fmt: skip
            messages.extend(Message.model_validate(m) for m in page.messages)
            after, more = page.next_cursor, page.has_more
            if sum(len(m.text) for m in messages) >= RESOURCE_CHARS:
                break
        return session, messages[:RESOURCE_MESSAGES], more
    except UnknownSession:
        raise ResourceNotFoundError(f"unknown session {quote(session_id)}; read sessions://index") from None
    except UserError as exc:
        raise ResourceNotFoundError(str(exc)) from None
    except SessionsError as exc:
        raise ResourceError(str(exc)) from None


def register_resources(mcp: MCPServer, service: SessionService) -> None:
    """Add the transcript, messages and index resources."""

    @mcp.resource("session://{backend}/{native_id}/transcript", name="transcript", title="Session transcript",
                  description="The session's transcript as Markdown.", mime_type="text/markdown")  # fmt: skip
    async def transcript(backend: str, native_id: str) -> str:
        session, messages, more = await _load(service, backend, native_id)
        text = transcript_markdown(session, messages)
        if more:
            text += f"\n_… longer transcript: read on with list_messages(session_id={session.id!r}, after=…)._\n"
        return text

    @mcp.resource("session://{backend}/{native_id}/messages", name="messages", title="Session messages",
                  description="The session and its messages as JSON.", mime_type="application/json")  # fmt: skip
    async def messages(backend: str, native_id: str) -> str:
        session, msgs, more = await _load(service, backend, native_id)
        return json.dumps(
            {
                "session": session.model_dump(mode="json"),
                "messages": [m.model_dump(mode="json") for m in msgs],
                "has_more": more,
                "next_cursor": msgs[-1].cursor if msgs else None,
            }
        )

    @mcp.resource(
        "sessions://index",
        name="index",
        title="Sessions",
        description="Enabled backends and your most recently updated sessions, as JSON.",
        mime_type="application/json",
    )
    async def index() -> str:
        try:
            page = await service.list_sessions(
                current_principal(), backend=None, status=None, query=None, cursor=None, limit=50
            )
            sessions = [s.model_dump(mode="json") for s in page.sessions]
            error = None
        except SessionsError as exc:
            sessions, error = [], str(exc)
        return json.dumps(
            {
                "backends": [i.model_dump(mode="json") for i in service.infos()],
                "default_backend": service.default_backend,
                "agents": service.agents(),
                "sessions": sessions,
                **({"error": error} if error else {}),
            }
        )

    del transcript, messages, index
