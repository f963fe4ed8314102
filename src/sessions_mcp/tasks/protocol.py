"""MCP tasks on the wire, both protocol eras, over the SDK's extension and middleware hooks.

- 2026-07-28, ``io.modelcontextprotocol/tasks`` (SEP-2663): an :class:`~mcp.server.extension.Extension`
  (advertised in ``server/discover``) whose ``tools/call`` interceptor answers ``CreateTaskResult``
  when the request declares the extension in its ``_meta`` and the call would wait for an agent,
  and which serves ``tasks/get``, ``tasks/update`` and ``tasks/cancel``.
- 2025-11-25 (SEP-1686): a server middleware, because the SDK checks every legacy ``tools/call``
  result against ``CallToolResult``: it adds ``capabilities.tasks`` to ``initialize`` and
  ``execution.taskSupport`` to the two tools, answers ``params.task`` calls with ``{task}``, and
  the extension's ``tasks/get``, ``tasks/result``, ``tasks/list``, ``tasks/cancel`` serve them.

The turn itself never runs in a request: the tool stores the user message, the service hands
the wait to :data:`~sessions_mcp.service.defer_wait`, and a stored task takes its place.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from typing import Any, cast

from mcp.server import ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError, NoBackChannelError
from mcp.shared.message import ServerMessageMetadata
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    CallToolRequestParams,
    CallToolResult,
    ClientCapabilities,
    ElicitationCapability,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    PaginatedRequestParams,
    RequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ConfigDict, Field

from ..errors import SessionsError
from ..principal import current_principal
from ..service import defer_wait
from .era import LEGACY_VERSION, declared, is_modern, legacy_view, require_extension
from .manager import TaskManager
from .model import EXTENSION_ID, MIN_TTL_MS, RELATED_TASK_META_KEY, TASK_TOOLS, TTL_MS, Era, TaskGone, TaskView, as_dict
from .notify import notify_legacy

log = logging.getLogger(__name__)

BOTH = frozenset({LEGACY_VERSION, *MODERN_PROTOCOL_VERSIONS})
LIST_PAGE = 50


class TaskIdParams(RequestParams):
    """``{taskId}`` (``requestState`` and other extras are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    task_id: str = Field(alias="taskId", min_length=1, max_length=200)


class UpdateTaskParams(TaskIdParams):
    """``tasks/update``: answers to outstanding ``inputRequests``."""

    input_responses: dict[str, Any] = Field(alias="inputResponses")


@dataclass
class _Deferral:
    """Filled by the service hook when a call stored a task instead of waiting."""

    manager: TaskManager
    tool: str
    era: Era
    ttl_ms: int | None = None
    view: TaskView | None = None

    async def __call__(self, principal: str, first: Any, max_chars: int) -> None:
        self.view = await self.manager.create(principal, self.tool, self.era, first, max_chars, ttl_ms=self.ttl_ms)


def _unknown(task_id: str) -> MCPError:
    return MCPError(
        code=INVALID_PARAMS,
        message=f"Failed to retrieve task: Task not found ({task_id!r} is unknown, or ended longer ago than its "
        "ttl, 24 h unless the client asked for less)",
    )


def _legacy_result(view: TaskView) -> dict[str, Any]:
    """``tasks/result``: exactly what the call would have returned, tagged with its task."""
    if view.row.result is not None:
        out: dict[str, Any] = json.loads(view.row.result)
    elif view.status == "cancelled":
        text = f"the task was cancelled: {view.status_message or 'the turn was interrupted'}"
        out = CallToolResult(content=[{"type": "text", "text": text}], is_error=True).model_dump(  # pyright: ignore[reportArgumentType]
            by_alias=True, mode="json", exclude_none=True
        )
    else:
        error = json.loads(view.row.error or "{}")
        raise MCPError(code=int(error.get("code", INTERNAL_ERROR)), message=str(error.get("message", "task failed")))
    meta = dict(out.get("_meta") or {})
    meta[RELATED_TASK_META_KEY] = {"taskId": view.row.id}
    out["_meta"] = meta
    return out


async def _elicit(ctx: ServerRequestContext[Any, Any], manager: TaskManager, principal: str, view: TaskView) -> None:
    """2025-11-25: ask the client of a blocked ``tasks/result`` what the agent asks (SEP-1686's flow).

    Sent as ``elicitation/create`` on the ``tasks/result`` request, tagged with the task; an
    accepted answer acts like ``send_message``. Without elicitation (or a back channel) nothing is
    asked: the task stays ``input_required`` and ``send_message`` answers it.
    """
    if not ctx.session.check_client_capability(ClientCapabilities(elicitation=ElicitationCapability())):
        return
    for key, request in view.input_requests.items():
        params = as_dict(as_dict(request).get("params"))
        elicit = ElicitRequest(
            params=ElicitRequestFormParams(
                message=str(params.get("message", "")),
                requested_schema=cast(Any, params.get("requestedSchema") or {}),
                _meta={RELATED_TASK_META_KEY: {"taskId": view.row.id}},
            )
        )
        try:
            answer = await ctx.session.send_request(
                elicit, ElicitResult, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
            )
        except (NoBackChannelError, MCPError) as exc:
            log.info("task %s: the client was not asked (%s); send_message answers it", view.row.id, exc)
            return
        try:
            await manager.answer(principal, view.row.id, {key: answer.model_dump(by_alias=True, mode="json")})
        except SessionsError as exc:  # e.g. an answer that is none of the options: ask nothing more
            log.info("task %s: the client's answer was not taken: %s", view.row.id, exc)


def _cursor(after: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps([after[0], after[1]]).encode()).decode()


def _after(cursor: str | None) -> tuple[int, str] | None:
    if not cursor:
        return None
    try:
        created, task_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return int(created), str(task_id)
    except Exception:
        raise MCPError(
            code=INVALID_PARAMS, message="invalid cursor for tasks/list; pass nextCursor unchanged"
        ) from None


class TasksExtension(Extension):
    """``io.modelcontextprotocol/tasks``, plus the 2025-11-25 task methods."""

    identifier = EXTENSION_ID

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager

    def methods(self) -> list[MethodBinding]:
        """``tasks/get``/``tasks/cancel`` in both eras, ``tasks/update`` (2026), ``tasks/result``/``tasks/list`` (2025)."""
        return [
            MethodBinding("tasks/get", TaskIdParams, self.get, protocol_versions=BOTH),
            MethodBinding("tasks/cancel", TaskIdParams, self.cancel, protocol_versions=BOTH),
            MethodBinding(
                "tasks/update", UpdateTaskParams, self.update, protocol_versions=frozenset(MODERN_PROTOCOL_VERSIONS)
            ),
            MethodBinding("tasks/result", TaskIdParams, self.result, protocol_versions=frozenset({LEGACY_VERSION})),
            MethodBinding(
                "tasks/list", PaginatedRequestParams, self.list, protocol_versions=frozenset({LEGACY_VERSION})
            ),
        ]

    async def _view(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> TaskView:
        require_extension(ctx)
        try:
            view = await self.manager.get(current_principal(), task_id)
        except TaskGone:
            view = None
        if view is None:
            raise _unknown(task_id)
        return view

    async def get(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        """``tasks/get``: the task now; in 2026 the result or error inlined once it ended."""
        view = await self._view(ctx, params.task_id)
        return view.modern() if is_modern(ctx) else legacy_view(view)

    async def cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        """``tasks/cancel``: record ``cancelled`` and interrupt the turn."""
        view = await self._view(ctx, params.task_id)
        if view.row.terminal:
            if is_modern(ctx):
                return {}  # cooperative: acknowledged, the task keeps its end
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"Cannot cancel task {view.row.id!r}: it already ended ({legacy_view(view)['status']})",
            )
        cancelled = await self.manager.cancel(current_principal(), view.row.id)
        if is_modern(ctx):
            return {}
        return legacy_view(cancelled or view)

    async def update(self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams) -> dict[str, Any]:
        """``tasks/update``: answer the pending request like ``send_message`` would."""
        require_extension(ctx)
        try:
            known = await self.manager.answer(current_principal(), params.task_id, params.input_responses)
        except TaskGone:
            known = False
        except SessionsError as exc:
            raise MCPError(code=INVALID_PARAMS, message=str(exc)) from None
        if not known:
            raise _unknown(params.task_id)
        return {}

    async def result(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        """``tasks/result`` (2025-11-25): block until the task ends, then what the call would have returned."""
        await self._view(ctx, params.task_id)
        principal = current_principal()

        async def relay(view: TaskView) -> None:
            await _elicit(ctx, self.manager, principal, view)

        try:
            view = await self.manager.wait(principal, params.task_id, on_input=relay)
        except TaskGone:
            view = None
        if view is None:
            raise _unknown(params.task_id)
        return _legacy_result(view)

    async def list(self, ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams) -> dict[str, Any]:
        """``tasks/list`` (2025-11-25): the caller's own tasks, newest first."""
        views = await self.manager.list(current_principal(), after=_after(params.cursor), limit=LIST_PAGE + 1)
        out: dict[str, Any] = {"tasks": [legacy_view(v) for v in views[:LIST_PAGE]]}
        if len(views) > LIST_PAGE:
            last = views[LIST_PAGE - 1].row
            out["nextCursor"] = _cursor((last.created_at, last.id))
        return out

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        """2026-07-28: a waiting call of a request that declared the extension becomes a task."""
        if not is_modern(ctx) or params.name not in TASK_TOOLS or not declared(ctx):
            return await call_next(ctx)
        deferral = _Deferral(self.manager, params.name, "2026")
        token = defer_wait.set(deferral)
        try:
            result = await call_next(ctx)
        finally:
            defer_wait.reset(token)
        if deferral.view is None:
            return result  # nothing to wait for (or a tool error): the plain result
        return deferral.view.modern(result_type="task", detailed=False)


class LegacyTasks:
    """Server middleware for the 2025-11-25 era (see the module docstring)."""

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Adjust ``initialize`` and ``tools/list``; turn ``tools/call`` with ``task`` into a task."""
        method = ctx.method
        if method == "initialize":
            result = await call_next(ctx)
            if isinstance(result, dict) and result.get("protocolVersion") == LEGACY_VERSION:
                caps = dict(cast(dict[str, Any], result.get("capabilities") or {}))
                caps["tasks"] = {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}
                result = {**result, "capabilities": caps}
            return result
        if ctx.protocol_version != LEGACY_VERSION or method not in ("tools/list", "tools/call"):
            return await call_next(ctx)
        if method == "tools/list":
            result = await call_next(ctx)
            if isinstance(result, dict) and isinstance(tools := result.get("tools"), list):
                for tool in cast(list[dict[str, Any]], tools):
                    if tool.get("name") in TASK_TOOLS:
                        tool["execution"] = {"taskSupport": "optional"}
            return result
        params = as_dict(ctx.params)
        task = params.get("task")
        if task is None:
            return await call_next(ctx)
        name = params.get("name")
        if name not in TASK_TOOLS:
            raise MCPError(
                code=METHOD_NOT_FOUND,
                message=f"tool {name!r} does not support task-augmented execution (execution.taskSupport is "
                f"absent); call it without `task`, or use one of: {', '.join(TASK_TOOLS)}",
            )
        deferral = _Deferral(self.manager, str(name), "2025", ttl_ms=_ttl(task))
        token = defer_wait.set(deferral)
        try:
            result = await call_next(ctx)
        finally:
            defer_wait.reset(token)
        view = deferral.view
        if view is None:  # nothing to wait for: the task is born with its result
            call = CallToolResult.model_validate(result or {}, by_name=False)
            view = await self.manager.create_finished(
                current_principal(), str(name), "2025", call, ttl_ms=deferral.ttl_ms
            )
        elif ctx.session.can_send_request:  # a connection that can push (not stateless HTTP)
            notify_legacy(self.manager, ctx, view)
        immediate = f"{view.status_message or 'task created'}; task {view.row.id} runs in the background"
        meta = {**view.meta(), "io.modelcontextprotocol/model-immediate-response": immediate}
        return {"task": legacy_view(view), "_meta": meta}


def _ttl(task: Any) -> int | None:
    """The ``ttl`` a 2025-11-25 client asked for, kept within 1 s .. 24 h (None: the default)."""
    ttl = as_dict(task).get("ttl")
    if not isinstance(ttl, int) or isinstance(ttl, bool):
        return None
    return max(MIN_TTL_MS, min(ttl, TTL_MS))
