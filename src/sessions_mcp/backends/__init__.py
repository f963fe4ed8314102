"""Backend registry: names map to factories that are imported only when enabled.

Importing :mod:`sessions_mcp` must not import a backend, an HTTP client or a database
driver that the configuration does not use, so entries are ``"module:function"`` strings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..settings import Settings
    from ..store.base import Store
    from .base import SessionBackend

BackendFactory = Callable[["Settings", "Store"], "SessionBackend"]

REGISTRY: dict[str, str] = {
    "local": "sessions_mcp.backends.local:create_backend",
    "factory": "sessions_mcp.backends.factory:create_backend",
    "fabro": "sessions_mcp.backends.fabro:create_backend",
    "a2a": "sessions_mcp.backends.a2a:create_backend",
}


def known_backends() -> list[str]:
    """Names that may appear in ``SESSIONS_MCP_BACKENDS``."""
    return list(REGISTRY)


def load_factory(name: str) -> BackendFactory:
    """Import the factory of the backend called ``name``."""
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r} in SESSIONS_MCP_BACKENDS; known: {', '.join(REGISTRY)}") from None
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return cast("BackendFactory", getattr(module, attr))


def create_backend(name: str, settings: Settings, store: Store) -> SessionBackend:
    """Build the backend called ``name`` from the settings; the store is shared."""
    return load_factory(name)(settings, store)
