"""Task status pushed to clients: ``notifications/tasks`` (2026) and ``notifications/tasks/status`` (2025).

- 2026-07-28: a ``subscriptions/listen`` request whose ``notifications`` carry ``taskIds`` (the
  extension's filter key). This wraps the server's listen handler: without ``taskIds`` nothing
  changes; with them, the stream honours the caller's own task ids (another principal's, or an
  unknown one, is left out of the acknowledgement), sends each task's current state after the
  ack, then every change, next to the resource events it also asked for.
- 2025-11-25: the connection that created a task gets ``notifications/tasks/status`` on each
  change (best effort, as the spec allows: clients poll anyway).
"""

from __future__ import annotations

import logging
from typing import Any, cast

import anyio
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY, ServerEvent, event_matches, event_to_notification
from mcp.types import (
    INVALID_PARAMS,
    SubscriptionFilter,
    SubscriptionsAcknowledgedNotification,
    SubscriptionsAcknowledgedNotificationParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    TaskStatusNotification,
    TaskStatusNotificationParams,
)
from pydantic import BaseModel

from ..principal import current_principal
from .era import legacy_view, require_extension
from .manager import TaskManager
from .model import TaskView

log = logging.getLogger(__name__)

MAX_TASK_IDS = 100
MAX_BUFFERED = 1024


class _Note(BaseModel):
    """A notification the SDK has no model for (``notifications/tasks``)."""

    method: str
    params: dict[str, Any]


def task_note(view: TaskView, meta: dict[str, Any]) -> _Note:
    """``notifications/tasks``: the full ``DetailedTask``, as ``tasks/get`` would answer now."""
    params = view.modern()
    params.pop("resultType", None)
    params["_meta"] = {**params.get("_meta", {}), **meta}
    return _Note(method="notifications/tasks", params=params)


def _honored(requested: SubscriptionFilter, task_ids: list[str]) -> SubscriptionFilter:
    return SubscriptionFilter.model_validate(
        {
            "toolsListChanged": True if requested.tools_list_changed else None,
            "promptsListChanged": True if requested.prompts_list_changed else None,
            "resourcesListChanged": True if requested.resources_list_changed else None,
            "resourceSubscriptions": list(requested.resource_subscriptions)
            if requested.resource_subscriptions
            else None,
            "taskIds": task_ids,
        }
    )


def install_listen(mcp: MCPServer, manager: TaskManager, bus: Any) -> None:
    """Wrap ``subscriptions/listen`` so it also serves ``taskIds``."""
    low = mcp._lowlevel_server  # pyright: ignore[reportPrivateUsage]
    entry = low.get_request_handler("subscriptions/listen")
    if entry is None:
        raise RuntimeError("subscriptions/listen must be registered before tasks are installed")
    inner = entry.handler

    async def on_listen(ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams) -> Any:
        extra = params.notifications.model_extra or {}
        requested = extra.get("taskIds")
        if requested is None:
            return await inner(ctx, params)
        require_extension(ctx)
        if not isinstance(requested, list) or not all(isinstance(t, str) for t in cast(list[Any], requested)):
            raise MCPError(code=INVALID_PARAMS, message="notifications.taskIds must be a list of task id strings")
        if len(cast(list[str], requested)) > MAX_TASK_IDS:
            raise MCPError(code=INVALID_PARAMS, message=f"listen to at most {MAX_TASK_IDS} task ids per stream")
        return await _serve(ctx, params, cast(list[str], requested), manager, bus)

    low.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, on_listen)


async def _serve(
    ctx: ServerRequestContext[Any, Any],
    params: SubscriptionsListenRequestParams,
    requested: list[str],
    manager: TaskManager,
    bus: Any,
) -> SubscriptionsListenResult:
    from ..subscriptions import _listen_uris  # pyright: ignore[reportPrivateUsage]

    subscription_id = ctx.request_id
    if subscription_id is None:
        raise MCPError(code=INVALID_PARAMS, message="subscriptions/listen requires a request id")
    owner = current_principal()
    rows = [row for t in dict.fromkeys(requested) if (row := await manager.store.task_get(owner, t)) is not None]
    honored = _honored(params.notifications, [r.id for r in rows])
    uris = frozenset(honored.resource_subscriptions or ())
    meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: subscription_id}
    send, recv = anyio.create_memory_object_stream[ServerEvent | TaskView](MAX_BUFFERED)

    def deliver(event: ServerEvent) -> None:
        if event_matches(honored, uris, event):
            try:
                send.send_nowait(event)
            except (anyio.WouldBlock, anyio.ClosedResourceError):
                send.close()  # a reader this far behind re-listens; nothing is replayed anyway

    async def on_task(view: TaskView) -> None:
        try:
            send.send_nowait(view)
        except (anyio.WouldBlock, anyio.ClosedResourceError):
            send.close()

    token = _listen_uris.set(uris)
    try:
        unsubscribe_bus = bus.subscribe(deliver)
    finally:
        _listen_uris.reset(token)
    unsubscribe_tasks = manager.subscribe(owner, frozenset(r.id for r in rows), on_task)
    try:
        await ctx.session.send_notification(
            SubscriptionsAcknowledgedNotification(
                params=SubscriptionsAcknowledgedNotificationParams(notifications=honored, _meta=meta)
            ),
            related_request_id=subscription_id,
        )
        for row in rows:  # the state now, so a task that ended before the stream opened is not missed
            await ctx.session.send_notification(
                cast(Any, task_note(await manager.observe(row), meta)), related_request_id=subscription_id
            )
            manager.follow(row)
        async for item in recv:
            note: Any = task_note(item, meta) if isinstance(item, TaskView) else event_to_notification(item, meta)
            await ctx.session.send_notification(note, related_request_id=subscription_id)
    finally:
        unsubscribe_bus()
        unsubscribe_tasks()
        send.close()
        recv.close()
    return SubscriptionsListenResult(_meta=meta)


def notify_legacy(manager: TaskManager, ctx: ServerRequestContext[Any, Any], view: TaskView) -> None:
    """Send ``notifications/tasks/status`` to this 2025-11-25 connection on each change of the task."""
    session = ctx.session
    unsubscribe: Any = None

    async def send(changed: TaskView) -> None:
        try:
            note = TaskStatusNotification(params=TaskStatusNotificationParams.model_validate(legacy_view(changed)))
            await session.send_notification(cast(Any, note))
        except Exception:
            log.debug("could not send notifications/tasks/status", exc_info=True)
        if changed.row.terminal and unsubscribe is not None:
            unsubscribe()

    unsubscribe = manager.subscribe(view.row.owner, frozenset({view.row.id}), send)
    manager.follow(view.row)
