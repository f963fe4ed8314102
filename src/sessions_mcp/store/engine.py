"""What every concern of the store may use from the engine under it (SQLite or PostgreSQL)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypeVar

import anyio

from .dialect import Body

T = TypeVar("T")


class Engine(ABC):
    """Connections and transactions; the concerns (:mod:`.sessions`, :mod:`.messages`, ...) sit on top."""

    location: str
    """Where the data lives, for messages (a path or a redacted URL)."""
    writer_id: str
    """Random id of this process's writer; the change log records it so followers skip their own."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and migrate. Raises a :class:`~sessions_mcp.errors.StoreError` with advice."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def describe(self) -> dict[str, Any]:
        """Facts for ``doctor``: location, schema version, size, ..."""

    @abstractmethod
    async def external_write_seen(self) -> bool:
        """Cheap check: did another connection commit since the last call? (may say True spuriously)"""

    async def wait_for_external(self, fallback_s: float, *, patient: bool = True) -> bool:
        """Return when another process may have committed: True at once when the engine hears of it
        (a wake-up socket, ``NOTIFY``); False after a timeout. The timeout is ``fallback_s`` (the
        change feed's poll), or, when the engine hears of commits and ``patient``, its longer
        safety interval."""
        await anyio.sleep(fallback_s)
        return False

    @abstractmethod
    async def _write(self, body: Body[T]) -> T:
        """Run ``body`` in one durable write transaction (retried from the start when contended)."""

    @abstractmethod
    async def _read(self, body: Body[T], *, consistent: bool = False) -> T:
        """Run a read. ``consistent``: ``body`` runs several statements that must see one snapshot."""

    def _check_text(self, *texts: str | None) -> None:  # noqa: B027
        """Refuse text the database cannot store (PostgreSQL: NUL characters); SQLite takes anything."""

    def _clean(self, text: str) -> str:
        """``text`` as a value the database can compare against (PostgreSQL drops NUL characters)."""
        return text
