"""Resource change notifications for both protocol eras.

- 2026-07-28 clients listen with ``subscriptions/listen``; we publish on the server's bus.
- 2025-11-25 clients use ``resources/subscribe``; ``MCPServer`` has no public hook for it, so
  the handlers are registered on the private low-level server here, the one place that
  reaches into SDK internals. Subscriptions are kept per connection (the SDK gives each
  request a new session proxy, so the connection object is the key).

Changes come from the local store's change feed (this process and others). The feed's
follower runs only while somebody listens here or waits on a session.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcp.server import NotificationOptions, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourcesListChanged, ResourceUpdated
from mcp.types import EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from .ids import Handle
from .store.base import Change

if TYPE_CHECKING:
    from .server import Runtime

log = logging.getLogger(__name__)

INDEX_URI = "sessions://index"


class CountingBus(InMemorySubscriptionBus):
    """The SDK's in-memory bus, telling us when the first listener arrives and the last leaves."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners = 0
        self.on_change: Callable[[], None] = lambda: None

    def subscribe(self, listener: Callable[[Any], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(listener)
        self.listeners += 1
        self.on_change()
        done = False

        def wrapped() -> None:
            nonlocal done
            if not done:
                done = True
                unsubscribe()
                self.listeners -= 1
                self.on_change()

        return wrapped


class Notifier:
    """Turns store changes into resource notifications for every connected client."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.bus = CountingBus()
        self.bus.on_change = self._sync_feed
        # connection -> (a session proxy usable to send, subscribed URIs)
        self.legacy: weakref.WeakKeyDictionary[Any, tuple[Any, set[str]]] = weakref.WeakKeyDictionary()
        self._remove_listener: Callable[[], None] | None = None

    def _feeds(self) -> list[Any]:
        feeds: list[Any] = []
        for backend in self.runtime.service.backends.values():
            feed = getattr(backend, "feed", None)
            if feed is not None:
                feeds.append(feed)
        return feeds

    @property
    def legacy_count(self) -> int:
        """Legacy subscriptions across connections."""
        return sum(len(uris) for _, uris in self.legacy.values())

    def _sync_feed(self) -> None:
        wanted = self.bus.listeners > 0 or self.legacy_count > 0
        if wanted and self._remove_listener is None:
            removers = [feed.add_listener(self.on_change) for feed in self._feeds()]

            def remove_all() -> None:
                for r in removers:
                    r()

            self._remove_listener = remove_all
        elif not wanted and self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None

    async def on_change(self, change: Change) -> None:
        """Fan one change out to both eras."""
        h = Handle("local", change.session_id)
        uris = [h.transcript_uri, h.messages_uri, INDEX_URI]
        await self.publish(uris, list_changed=change.kind in ("created", "deleted"))

    async def publish(self, uris: list[str], *, list_changed: bool) -> None:
        """Send resource-updated for ``uris`` (and list-changed) to modern and legacy clients."""
        for uri in uris:
            await self.bus.publish(ResourceUpdated(uri=uri))
        if list_changed:
            await self.bus.publish(ResourcesListChanged())
        for conn, (session, subscribed) in list(self.legacy.items()):
            del conn
            try:
                for uri in uris:
                    if uri in subscribed:
                        await session.send_resource_updated(uri)
                if list_changed:
                    await session.send_resource_list_changed()
            except Exception:
                log.debug("dropping a legacy connection that cannot be notified", exc_info=True)

    def install(self, mcp: MCPServer) -> None:
        """Register the legacy handlers and advertise listChanged to legacy clients."""

        async def on_subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
            conn = ctx.session._connection  # pyright: ignore[reportPrivateUsage]
            _, uris = self.legacy.get(conn, (ctx.session, set[str]()))
            uris.add(str(params.uri))
            self.legacy[conn] = (ctx.session, uris)
            self._sync_feed()
            return EmptyResult()

        async def on_unsubscribe(ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
            conn = ctx.session._connection  # pyright: ignore[reportPrivateUsage]
            entry = self.legacy.get(conn)
            if entry is not None:
                entry[1].discard(str(params.uri))
                if not entry[1]:
                    del self.legacy[conn]
            self._sync_feed()
            return EmptyResult()

        low = mcp._lowlevel_server  # pyright: ignore[reportPrivateUsage]
        low.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
        low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
        original = low.create_initialization_options

        def with_list_changed(notification_options: NotificationOptions | None = None, **kw: Any) -> Any:
            return original(notification_options or NotificationOptions(resources_changed=True), **kw)

        low.create_initialization_options = with_list_changed  # type: ignore[method-assign]
