"""The ``delegate`` prompt and argument completions."""

from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.types import Completion, PromptReference, ResourceTemplateReference

from .principal import current_principal
from .service import SessionService

DELEGATE = """\
Delegate this task to an agent session and follow it to the end.

Task:
{task}

How:
1. Call create_session(prompt=<the task, with all context the agent needs>{backend_arg}). Keep the
   returned session id and cursor.
2. If the result's status is 'running', the agent is still working: call
   list_messages(session_id=<id>, after=<cursor>, wait_s=60) until status is 'idle' or 'failed',
   each time passing the returned next_cursor as `after`. Waiting never stops the agent.
3. If the status is 'awaiting_reply', no agent is attached: another agent answers with
   send_message(role='assistant'); poll with list_messages(after=<cursor>, wait_s=60).
4. To follow up, call send_message(session_id=<id>, text=...). Only interrupt_session stops a turn.
5. When the status is 'failed', read the session's `error` and decide whether to retry.
6. If the status is 'needs_input', the agent asks for a permission or an answer (`pending`): ask the
   person when the choice is theirs, then answer with send_message(session_id=<id>, text=<an option
   id or label, or the answer>).
Report the agent's final answer and anything it could not do.
"""


def register_prompts(mcp: MCPServer, service: SessionService) -> None:
    """Add the ``delegate`` prompt and the completion handler."""
    names = ", ".join(service.backends)

    @mcp.prompt(
        name="delegate",
        title="Delegate a task to an agent session",
        description=f"Hand a task to an agent session and follow it. Backends: {names}.",
    )
    def delegate(task: str, backend: str | None = None, agent: str | None = None) -> str:
        backend_arg = f", backend={backend!r}" if backend else ""
        if agent:
            backend_arg += f", agent={agent!r}"
        return DELEGATE.format(task=task, backend_arg=backend_arg)

    @mcp.completion()
    async def complete(ref: Any, argument: Any, context: Any) -> Completion | None:
        name = getattr(argument, "name", "")
        value = getattr(argument, "value", "") or ""
        if name == "backend" and isinstance(ref, (PromptReference, ResourceTemplateReference)):
            values = [b for b in service.backends if b.startswith(value)]
            return Completion(values=values, total=len(values), has_more=False)
        if name == "agent" and isinstance(ref, PromptReference):
            agents = service.agents()
            values = [a["name"] for a in agents if a["available"] and a["name"].startswith(value)]
            return Completion(values=values, total=len(values), has_more=False)
        if name in ("native_id", "session_id") and isinstance(ref, ResourceTemplateReference):
            chosen = None
            if context is not None and getattr(context, "arguments", None):
                chosen = context.arguments.get("backend")
            backend = chosen if chosen in service.backends else None
            try:
                page = await service.list_sessions(
                    current_principal(), backend=backend, status=None, query=None, cursor=None, limit=100
                )
            except Exception:
                return Completion(values=[], total=0, has_more=False)
            ids = [s.id.partition(":")[2] if name == "native_id" else s.id for s in page.sessions]
            values = [i for i in ids if i.startswith(value)][:100]
            return Completion(values=values, total=len(values), has_more=False)
        return None

    del delegate, complete
