"""The ``factory`` backend: Factory's public Sessions API v0 (``/api/v0/sessions``).

Configuration: ``FACTORY_API_KEY``, ``SESSIONS_MCP_FACTORY__BASE_URL`` (default
``https://api.factory.ai``), optional ``SESSIONS_MCP_FACTORY__COMPUTER_ID`` and
``SESSIONS_MCP_FACTORY__CWD``. See ``docs/backend-factory.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import FactoryBackend

if TYPE_CHECKING:
    import httpx2

    from ...settings import Settings
    from ...store.base import Store

__all__ = ["FactoryBackend", "create_backend"]


def create_backend(
    settings: Settings, store: Store, *, transport: httpx2.AsyncBaseTransport | None = None
) -> FactoryBackend:
    """Build the Factory backend (``transport`` replaces the network in tests)."""
    del store  # sessions live in Factory; idempotency records are kept by the service
    return FactoryBackend(settings.factory, transport=transport)
