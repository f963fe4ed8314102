"""The embedded ``local`` backend: sessions in the local store, answered by another MCP client
(the mailbox) or by an agent the server runs (a command line or an OpenAI-compatible model)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import LocalBackend

if TYPE_CHECKING:
    from ...settings import Settings
    from ...store.base import Store

__all__ = ["LocalBackend", "create_backend"]


def create_backend(settings: Settings, store: Store) -> LocalBackend:
    """Build the local backend on the shared store."""
    return LocalBackend(store, settings.local, factory_app=settings.factory_app, agents=settings.agents)
