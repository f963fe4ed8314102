"""Optional mirror of local sessions into the Factory web app (``SESSIONS_MCP_LOCAL__MIRROR=factory-app``).

Unofficial: it speaks the web app's internal API as captured in the seed (see
:mod:`.factory_app`). The local store stays the source of truth; the mirror never blocks or
loses a local write (see :mod:`.outbox`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from ..diagnostics import Check
from .factory_app import FactoryAppClient
from .outbox import FAILED_AFTER, Mirror, outbox_checks, stats_check

if TYPE_CHECKING:
    import httpx2
    from anyio.abc import TaskGroup

    from ..settings import FactoryAppSettings, Settings
    from ..store.base import Store
    from ..store.feed import ChangeFeed

__all__ = ["FactoryAppClient", "Mirror", "mirror_checks", "outbox_checks", "start_mirror"]


def create_mirror(
    store: Store, app: FactoryAppSettings, *, transport: httpx2.AsyncBaseTransport | None = None
) -> Mirror:
    """A mirror worker for ``store`` (not started)."""
    token = app.token.get_secret_value() if app.token is not None else None
    return Mirror(store, FactoryAppClient(base_url=app.base_url, token=token, transport=transport))


async def start_mirror(
    store: Store,
    feed: ChangeFeed,
    app: FactoryAppSettings,
    tg: TaskGroup,
    *,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> Mirror:
    """Create the mirror, hook it to ``feed`` and run its worker in ``tg``."""
    mirror = create_mirror(store, app, transport=transport)
    await mirror.start(feed, tg)
    return mirror


async def mirror_checks(settings: Settings, store: Store) -> list[Check]:
    """Doctor checks: the token is set, and the outbox counts (read-only for SQLite)."""
    del store  # the doctor must not migrate the database it inspects: read the file directly
    checks: list[Check] = []
    if settings.factory_app.token is None:
        checks.append(
            Check(
                "mirror: token",
                "fail",
                "SESSIONS_MCP_LOCAL__MIRROR=factory-app but SESSIONS_MCP_FACTORY_APP__TOKEN is not set",
                "set SESSIONS_MCP_FACTORY_APP__TOKEN (a Factory web-app token), or unset SESSIONS_MCP_LOCAL__MIRROR",
            )
        )
    else:
        checks.append(
            Check("mirror: token", "ok", f"set; mirroring to {settings.factory_app.base_url} (unofficial API)")
        )
    location = settings.local.db_location()
    if location.startswith(("postgresql://", "postgres://")):
        checks.append(Check("mirror: outbox", "warn", "the PostgreSQL store has no mirror outbox", "use SQLite"))
        return checks
    checks.append(await anyio.to_thread.run_sync(_sqlite_outbox_check, location))
    return checks


def _sqlite_outbox_check(location: str) -> Check:
    path = Path(location).expanduser()
    if not path.exists():
        return Check("mirror: outbox", "ok", "nothing mirrored yet (no database)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            pending, failed, mirrored = conn.execute(
                "SELECT coalesce(sum(version > synced_version), 0),"
                " coalesce(sum(version > synced_version AND attempts >= ?), 0),"
                " coalesce(sum(version <= synced_version), 0) FROM mirror_outbox",
                (FAILED_AFTER,),
            ).fetchone()
            err = conn.execute(
                "SELECT last_error FROM mirror_outbox WHERE last_error IS NOT NULL ORDER BY updated_at DESC LIMIT 1"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            return Check("mirror: outbox", "ok", "nothing mirrored yet")
        return Check("mirror: outbox", "warn", f"cannot read the outbox: {exc}")
    return stats_check(int(pending), int(failed), int(mirrored), err[0] if err else None)
