"""``sessions-mcp doctor``: check the configuration, the local store and every enabled backend.

The checks of the store are in :mod:`.doctor_store`, those of the configuration in
:mod:`.doctor_config`; this module runs the backends' own checks and prints the table.

It builds what the server would build (store, backends) without serving anything, asks each
backend for its :meth:`~sessions_mcp.backends.base.SessionBackend.diagnose` checks and inspects
the store itself, read-only where it can: a doctor must not migrate, repair or create a database
the user is asking about. The result is a table of :class:`~sessions_mcp.diagnostics.Check` lines
(ok / warn / FAIL, what was found, what to do) on stdout; the exit status is 1 when any check
failed. Secrets never appear: every configured secret value is masked in the output as a last
line of defence behind the checks' own care.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

import anyio
from pydantic import BaseModel, SecretStr

from . import __version__
from .diagnostics import Check
from .doctor_config import config_checks, http_checks, local_agent_checks
from .doctor_store import sqlite_checks, store_checks
from .errors import SessionsError

__all__ = [
    "backend_checks",
    "collect",
    "config_checks",
    "http_checks",
    "mask",
    "render",
    "run_doctor",
    "sqlite_checks",
    "store_checks",
]

if TYPE_CHECKING:
    from .backends.base import SessionBackend
    from .settings import Settings
    from .store.base import Store

BACKEND_TIMEOUT_S = 30.0
"""How long one backend's checks may take before the doctor reports it as not answering."""
# --- backends ------------------------------------------------------------------------------------


async def backend_checks(name: str, settings: Settings, store: Store) -> list[Check]:
    """One backend's checks; never raises."""
    from .backends import create_backend
    from .backends.base import SessionBackend

    try:
        backend: SessionBackend = create_backend(name, settings, store)
    except SessionsError as exc:
        return [Check(name, "fail", str(exc), "change the setting named above")]
    except ImportError as exc:
        return [
            Check(
                name,
                "fail",
                f"the {name} backend cannot be loaded ({exc})",
                f"reinstall sessions-mcp, or remove {name} from SESSIONS_MCP_BACKENDS",
            )
        ]
    except Exception as exc:
        return [
            Check(
                name,
                "fail",
                f"cannot set up the {name} backend: {type(exc).__name__}: {exc}",
                f"check the {name} settings (README: configuration)",
            )
        ]
    if type(backend).diagnose is SessionBackend.diagnose:
        if name == "local":
            return local_agent_checks(settings)
        return [Check(name, "ok", "enabled (this backend has no further checks)")]
    try:
        with anyio.fail_after(BACKEND_TIMEOUT_S):
            checks = await backend.diagnose()
    except TimeoutError:
        checks = [
            Check(
                name,
                "fail",
                f"no answer within {BACKEND_TIMEOUT_S:g}s",
                f"check the network, a proxy, and the {name} base URL setting",
            )
        ]
    except Exception as exc:
        checks = [
            Check(
                name,
                "fail",
                f"checks crashed: {type(exc).__name__}: {exc}",
                "report this; run with --log-level DEBUG for details",
            )
        ]
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(Exception):
                await backend.aclose()
    return checks or [Check(name, "ok", "enabled")]


async def collect(settings: Settings) -> list[Check]:
    """Every check, in the order they are printed."""
    from .hosts import host_checks
    from .store import create_store
    from .views import with_progress

    checks = config_checks(settings) + host_checks()
    checks += await with_progress("checking the local store", lambda: store_checks(settings))
    store = create_store(settings.local)
    for name in settings.backends:
        checks += await with_progress(f"checking the {name} backend", lambda n=name: backend_checks(n, settings, store))
    if settings.local.mirror:
        from .mirror import mirror_checks

        checks += await with_progress("checking the web-app mirror", lambda: mirror_checks(settings, store))
    with anyio.CancelScope(shield=True):
        with contextlib.suppress(Exception):
            await store.close()
    return checks


# --- output ------------------------------------------------------------------------------------


def _secrets(model: BaseModel) -> Iterator[str]:
    for name in type(model).model_fields:
        value: Any = getattr(model, name)
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            if len(raw) >= 4:
                yield raw
                # a tokens list is "principal=token,..." and a check may quote one token
                for piece in raw.replace("\n", ",").split(","):
                    token = piece.partition("=")[2].strip()
                    if len(token) >= 4:
                        yield token
        elif isinstance(value, BaseModel):
            yield from _secrets(value)


def mask(text: str, secrets: list[str]) -> str:
    """``text`` with every secret value replaced."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


_LABEL = {"ok": "ok", "warn": "warn", "fail": "FAIL"}
_COLOR = {"ok": "32", "warn": "33", "fail": "31"}


def _wrap(text: str, width: int) -> list[str]:
    # paths, URLs and commands stay whole so they can be copied
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def render(checks: list[Check], *, width: int = 100, color: bool = False) -> str:
    """The table: status, what was checked, what was found, and on the next line what to do."""
    comp_w = min(max((len(c.component) for c in checks), default=10), 24)
    indent = 6 + comp_w + 2
    body_w = max(width - indent, 30)
    lines: list[str] = [f"{'':6}{'CHECK':<{comp_w}}  FOUND"]
    for c in checks:
        label = _LABEL[c.level]
        shown = f"\033[{_COLOR[c.level]}m{label:<4}\033[0m" if color else f"{label:<4}"
        detail = _wrap(c.detail, body_w) or [""]
        component = c.component if len(c.component) <= comp_w else c.component[: comp_w - 1] + "…"
        lines.append(f"{shown}  {component:<{comp_w}}  {detail[0]}")
        lines += [" " * indent + more for more in detail[1:]]
        if c.fix and c.level != "ok":
            fix = _wrap("fix: " + c.fix, body_w)
            lines += [" " * indent + part for part in fix]
    fails = sum(c.level == "fail" for c in checks)
    warns = sum(c.level == "warn" for c in checks)
    oks = len(checks) - fails - warns
    summary = f"{oks} ok, {warns} warning(s), {fails} failure(s)"
    if fails:
        summary += ": something is broken; follow the 'fix:' lines above"
    elif warns:
        summary += ": working; the warnings say what could go wrong"
    else:
        summary += ": everything looks fine"
    return "\n".join([*lines, "", summary]) + "\n"


def run_doctor(settings: Settings, *, out: TextIO | None = None) -> int:
    """Run every check, print the table; 1 when something is broken, else 0."""
    stream = out or sys.stdout
    checks = anyio.run(collect, settings)
    secrets = list(_secrets(settings))
    checks = [Check(c.component, c.level, mask(c.detail, secrets), mask(c.fix, secrets)) for c in checks]
    width = shutil.get_terminal_size((100, 24)).columns
    color = stream.isatty() and not os.environ.get("NO_COLOR")
    stream.write(f"sessions-mcp {__version__} doctor\n\n")
    stream.write(render(checks, width=min(width, 140), color=color))
    stream.flush()
    return 1 if any(c.level == "fail" for c in checks) else 0
