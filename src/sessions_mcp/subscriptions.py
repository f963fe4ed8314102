"""Resource change notifications for both protocol eras, per principal, on every backend.

- 2026-07-28 clients listen with ``subscriptions/listen``; we publish on the server's bus.
- 2025-11-25 clients use ``resources/subscribe``; ``MCPServer`` has no public hook for it.

This is the one module that reaches into SDK internals (``_lowlevel_server``, the session's
``_connection``, re-registering ``subscriptions/listen``); keep it that way.

Where changes come from:

- local sessions: the store's change feed (writes of this process and of others sharing
  the store). The feed's follower polls only while somebody listens or waits.
- remote sessions (Factory, Fabro): a watcher task per subscribed session follows it through
  the backend's ``watch()`` (polling with backoff, or the live stream) and stops when the last
  subscriber leaves; the service also reports changes it sees while a call waits or writes.

Isolation: every event carries its owner (the principal of a local session; ``None`` for
remote sessions, which use the server's credentials); a listener bound to another principal
never receives it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from mcp.server import NotificationOptions, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourcesListChanged, ResourceUpdated
from mcp.types import EmptyResult, SubscribeRequestParams, SubscriptionsListenRequestParams, UnsubscribeRequestParams

from .backends.base import SessionBackend
from .ids import Handle
from .principal import current_principal
from .store.base import Change

if TYPE_CHECKING:
    from .server import Runtime

log = logging.getLogger(__name__)

INDEX_URI = "sessions://index"
_event_owner: ContextVar[str | None] = ContextVar("sessions_mcp_event_owner", default=None)
_listen_uris: ContextVar[frozenset[str]] = ContextVar("sessions_mcp_listen_uris", default=frozenset())


def wants_progress(request_context: Any) -> bool:
    """Whether the caller of this request asked for progress notifications.

    Over JSON-RPC (stdio, HTTP, SSE) the token is in ``_meta``. The SDK's in-process dispatcher
    delivers progress to a callback without a token, so there we cannot tell and say yes.
    """
    meta = getattr(request_context, "meta", None)
    if isinstance(meta, dict) and meta.get("progress_token") is not None:  # pyright: ignore[reportUnknownMemberType]
        return True
    outbound: Any = getattr(getattr(request_context, "session", None), "_request_outbound", None)
    outbound = getattr(outbound, "_inner", outbound)
    return outbound is not None and not hasattr(outbound, "_progress_token")


def parse_session_uri(uri: str) -> Handle | None:
    """``session://{backend}/{native}/(transcript|messages)`` -> handle, else None."""
    if not uri.startswith("session://"):
        return None
    parts = uri[len("session://") :].split("/")
    if len(parts) != 3 or parts[2] not in ("transcript", "messages") or not parts[0] or not parts[1]:
        return None
    return Handle(parts[0], parts[1])


class CountingBus(InMemorySubscriptionBus):
    """The SDK's bus, with listeners bound to their principal and counted."""

    def __init__(self, notifier: Notifier) -> None:
        super().__init__()
        self.listeners = 0
        self._notifier = notifier

    def subscribe(self, listener: Callable[[Any], None]) -> Callable[[], None]:
        principal = current_principal()
        uris = _listen_uris.get()

        def bound(event: Any) -> None:
            owner = _event_owner.get()
            if owner is None or owner == principal:
                listener(event)

        unsubscribe = super().subscribe(bound)
        self.listeners += 1
        for uri in uris:
            self._notifier.acquire(uri, principal)
        self._notifier.sync_feed()
        done = False

        def wrapped() -> None:
            nonlocal done
            if not done:
                done = True
                unsubscribe()
                self.listeners -= 1
                for uri in uris:
                    self._notifier.release(uri)
                self._notifier.sync_feed()

        return wrapped


@dataclass
class _LegacyConn:
    session: Any
    principal: str
    uris: set[str] = field(default_factory=set[str])


@dataclass
class _Watcher:
    refs: int
    """Modern listen streams on this session (legacy subscriptions are counted live)."""
    scope: anyio.CancelScope


class Notifier:
    """Turns session changes into resource notifications for every connected client."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.bus = CountingBus(self)
        self.legacy: weakref.WeakKeyDictionary[Any, _LegacyConn] = weakref.WeakKeyDictionary()
        self.watchers: dict[tuple[str, str], _Watcher] = {}
        self._remove_listener: Callable[[], None] | None = None

    # --- bookkeeping --------------------------------------------------------------------

    def _feeds(self) -> list[Any]:
        return [f for b in self.runtime.service.backends.values() if (f := getattr(b, "feed", None)) is not None]

    @property
    def legacy_count(self) -> int:
        """Legacy subscriptions across connections."""
        return sum(len(c.uris) for c in self.legacy.values())

    def sync_feed(self) -> None:
        """Follow the local change feed only while somebody listens."""
        wanted = self.bus.listeners > 0 or self.legacy_count > 0
        if wanted and self._remove_listener is None:
            removers = [feed.add_listener(self.on_local_change) for feed in self._feeds()]

            def remove_all() -> None:
                for r in removers:
                    r()

            self._remove_listener = remove_all
        elif not wanted and self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None

    def _remote(self, uri: str) -> tuple[Handle, SessionBackend] | None:
        h = parse_session_uri(uri)
        if h is None:
            return None
        backend = self.runtime.service.backends.get(h.backend)
        if backend is None or getattr(backend, "feed", None) is not None:
            return None
        return h, backend

    def acquire(self, uri: str, principal: str) -> None:
        """A subscriber arrived for ``uri``: watch a remote session while anyone does."""
        found = self._remote(uri)
        if found is None:
            return
        h, backend = found
        key = (h.backend, h.native_id)
        w = self.watchers.get(key)
        if w is not None:
            w.refs += 1 if uri in _listen_uris.get() else 0
            return
        try:
            tg = self.runtime.task_group
        except RuntimeError:
            return
        scope = anyio.CancelScope()
        self.watchers[key] = _Watcher(1 if uri in _listen_uris.get() else 0, scope)
        tg.start_soon(self._watch_remote, backend, h, principal, scope)

    def release(self, uri: str) -> None:
        """A subscriber left ``uri``."""
        h = parse_session_uri(uri)
        if h is None:
            return
        key = (h.backend, h.native_id)
        w = self.watchers.get(key)
        if w is None:
            return
        w.refs -= 1
        if not self._wanted(key):
            w.scope.cancel()
            del self.watchers[key]

    def _wanted(self, key: tuple[str, str]) -> bool:
        w = self.watchers.get(key)
        if w is None:
            return False
        h = Handle(*key)
        legacy = any(h.transcript_uri in c.uris or h.messages_uri in c.uris for c in self.legacy.values())
        return w.refs > 0 or legacy

    async def _watch_remote(self, backend: SessionBackend, h: Handle, principal: str, scope: anyio.CancelScope) -> None:
        with scope:
            snapshot: tuple[Any, ...] | None = None
            try:
                async with backend.watch(principal, h.native_id) as watch:
                    while True:
                        try:
                            rec = await backend.get_session(principal, h.native_id)
                            now = (rec.status, rec.message_count, rec.updated_at, rec.title, rec.head)
                        except Exception as exc:
                            log.debug("watcher for %s: %s", h, exc)
                            now = ("gone",)
                        if snapshot is not None and now != snapshot:
                            await self.publish_session(h, owner=None, list_changed=now == ("gone",))
                        snapshot = now
                        if now == ("gone",) or not self._wanted((h.backend, h.native_id)):
                            return
                        await watch.next(30.0)
            except Exception:
                log.warning("watcher for %s stopped", h, exc_info=True)
            finally:
                w = self.watchers.get((h.backend, h.native_id))
                if w is not None and w.scope is scope:
                    del self.watchers[(h.backend, h.native_id)]

    # --- publishing ---------------------------------------------------------------------

    async def on_local_change(self, change: Change) -> None:
        """A local session changed (here or in another process)."""
        await self.publish_session(
            Handle("local", change.session_id),
            owner=change.owner,
            list_changed=change.kind in ("created", "deleted"),
        )

    async def publish_session(self, h: Handle, *, owner: str | None, list_changed: bool = False) -> None:
        """Announce that session ``h`` changed to whoever may see it."""
        await self.publish([h.transcript_uri, h.messages_uri, INDEX_URI], owner=owner, list_changed=list_changed)

    async def publish(self, uris: list[str], *, owner: str | None, list_changed: bool) -> None:
        """Send resource-updated for ``uris`` (and list-changed) to modern and legacy clients."""
        token = _event_owner.set(owner)
        try:
            for uri in uris:
                await self.bus.publish(ResourceUpdated(uri=uri))
            if list_changed:
                await self.bus.publish(ResourcesListChanged())
        finally:
            _event_owner.reset(token)
        for conn in list(self.legacy.values()):
            if owner is not None and conn.principal != owner:
                continue
            try:
                for uri in uris:
                    if uri in conn.uris:
                        await conn.session.send_resource_updated(uri)
                if list_changed:
                    await conn.session.send_resource_list_changed()
            except Exception:
                log.debug("a legacy connection could not be notified", exc_info=True)

    # --- SDK wiring ---------------------------------------------------------------------

    def install(self, mcp: MCPServer) -> None:
        """Register the legacy handlers, wrap ``subscriptions/listen``, advertise listChanged."""

        async def on_subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
            conn_key = ctx.session._connection  # pyright: ignore[reportPrivateUsage]
            conn = self.legacy.get(conn_key)
            if conn is None:
                conn = self.legacy[conn_key] = _LegacyConn(ctx.session, current_principal())
                # a client may leave without unsubscribing: release its subscriptions when its
                # connection ends, or they keep the change feed polling and every write fanning out
                conn_key.exit_stack.callback(self.forget_connection, conn_key)
            uri = str(params.uri)
            if uri not in conn.uris:
                conn.uris.add(uri)
                self.acquire(uri, conn.principal)
            self.sync_feed()
            return EmptyResult()

        async def on_unsubscribe(ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
            conn_key = ctx.session._connection  # pyright: ignore[reportPrivateUsage]
            conn = self.legacy.get(conn_key)
            uri = str(params.uri)
            if conn is not None and uri in conn.uris:
                conn.uris.discard(uri)
                self.release(uri)
                if not conn.uris:
                    del self.legacy[conn_key]
            self.sync_feed()
            return EmptyResult()

        listen = ListenHandler(self.bus)

        async def on_listen(ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams) -> Any:
            uris = frozenset(params.notifications.resource_subscriptions or ())
            token = _listen_uris.set(uris)
            try:
                return await listen(ctx, params)
            finally:
                _listen_uris.reset(token)

        low = mcp._lowlevel_server  # pyright: ignore[reportPrivateUsage]
        low.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
        low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, on_unsubscribe)
        low.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, on_listen)
        original = low.create_initialization_options

        def with_list_changed(notification_options: NotificationOptions | None = None, **kw: Any) -> Any:
            return original(notification_options or NotificationOptions(resources_changed=True), **kw)

        low.create_initialization_options = with_list_changed  # type: ignore[method-assign]

    def forget_connection(self, conn_key: Any) -> None:
        """Drop a legacy connection's subscriptions (it disconnected)."""
        conn = self.legacy.pop(conn_key, None)
        if conn is not None:
            for uri in conn.uris:
                self.release(uri)
        self.sync_feed()
