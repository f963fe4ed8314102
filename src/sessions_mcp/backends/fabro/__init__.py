"""The ``fabro`` backend: the Fabro sessions API (``fabro-api.yaml``, tag ``Sessions``) with live
SSE replies and a static token or an EdDSA JWT minted per request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ConfigError
from .backend import FabroBackend
from .client import FabroClient

if TYPE_CHECKING:
    from ...settings import Settings
    from ...store.base import Store

__all__ = ["FabroBackend", "FabroClient", "create_backend"]


def create_backend(settings: Settings, store: Store) -> FabroBackend:
    """Build the Fabro backend. A configuration problem does not stop the server: every call
    (and ``doctor``) then reports it, naming the setting to fix."""
    fabro = settings.fabro
    if not fabro.base_url:
        return FabroBackend(
            fabro, store, config_error=ConfigError(
                "SESSIONS_MCP_FABRO__BASE_URL is empty; set it to the Fabro server, e.g. http://127.0.0.1:3000"
            ),
        )  # fmt: skip
    try:
        client = FabroClient.from_settings(fabro)
    except ConfigError as exc:
        return FabroBackend(fabro, store, config_error=exc)
    return FabroBackend(fabro, store, client=client)
