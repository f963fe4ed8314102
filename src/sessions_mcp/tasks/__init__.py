"""MCP tasks in both protocol eras: durable, restart-proof background turns for clients that ask.

- :mod:`.model`: the stored task and its wire shapes;
- :mod:`sessions_mcp.store.tasks`: the ``tasks`` table (SQLite and PostgreSQL);
- :mod:`.manager`: create, observe, answer, cancel (protocol-neutral);
- :mod:`.protocol`: the 2026-07-28 extension and the 2025-11-25 middleware;
- :mod:`.notify`: status pushed over ``subscriptions/listen`` and legacy connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from ..server import Runtime
    from .manager import TaskManager
    from .protocol import TasksExtension


def build_tasks(runtime: Runtime) -> tuple[TaskManager, TasksExtension]:
    """The task manager over the runtime's store and the extension to pass to ``MCPServer``."""
    from .manager import TaskManager
    from .protocol import TasksExtension

    manager = TaskManager(runtime.service, runtime.store)
    runtime.service.before_interrupt = manager.before_interrupt
    return manager, TasksExtension(manager)


def install_tasks(mcp: MCPServer, manager: TaskManager, bus: Any) -> None:
    """Register the 2025-11-25 middleware and the ``taskIds`` listen filter (after the tools)."""
    from .notify import install_listen
    from .protocol import LegacyTasks

    mcp.middleware.append(LegacyTasks(manager))
    install_listen(mcp, manager, bus)
