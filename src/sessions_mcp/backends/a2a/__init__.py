"""The ``a2a`` backend: sessions with remote agents that speak the Agent2Agent protocol (A2A 1.0,
0.3 fallback), through the official ``a2a-sdk`` client (the ``sessions-mcp[a2a]`` extra)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ConfigError

if TYPE_CHECKING:
    from ...settings import Settings
    from ...store.base import Store
    from .backend import A2ABackend

__all__ = ["create_backend"]


def create_backend(settings: Settings, store: Store) -> A2ABackend:
    """Build the A2A backend. A configuration problem does not stop the server: every call (and
    ``doctor``) then reports it, naming the setting to fix. Without ``a2a-sdk`` this is a clear error."""
    try:
        import a2a.client  # noqa: F401  # pyright: ignore[reportUnusedImport]
    except ImportError:
        raise ConfigError(
            "the a2a backend needs the a2a-sdk package: pip install 'sessions-mcp[a2a]' "
            "(or remove a2a from SESSIONS_MCP_BACKENDS)"
        ) from None
    from .backend import A2ABackend
    from .config import parse_agents

    try:
        agents = parse_agents(settings.a2a)
    except ConfigError as exc:
        return A2ABackend(settings.a2a, store, config_error=exc)
    return A2ABackend(settings.a2a, store, agents=agents)
