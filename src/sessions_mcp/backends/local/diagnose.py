"""``sessions-mcp doctor`` checks of the local backend's agents: one line per named agent."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ...diagnostics import Check

if TYPE_CHECKING:
    from .backend import LocalBackend


def agent_checks(backend: LocalBackend) -> list[Check]:
    """The default agent, every preset and configured agent (installed or what to install), the roots."""
    from ...doctor_config import local_agent_checks
    from ...settings import Settings
    from .registry import agent_roots

    settings = backend.settings
    default = settings.agent
    out: list[Check] = []
    if default in ("command", "openai") or default == "none":
        out += local_agent_checks(Settings.model_construct(local=settings))
    elif default not in backend.specs:
        out.append(
            Check("local: agent", "fail", f"the default agent {default!r} is not known",
                  "set SESSIONS_MCP_LOCAL__AGENT to none, a preset or a configured [agents.<name>]")
        )  # fmt: skip
    for spec in backend.specs.values():
        if spec.source == "legacy":
            continue
        what = f"{spec.name} ({spec.kind}, permissions {spec.permissions}): {spec.detail}"
        if spec.available:
            out.append(Check("local: agents", "ok", what))
        elif spec.name == default or spec.source == "configured":
            out.append(Check("local: agents", "fail", what, "install it, or change its COMMAND setting"))
        else:
            out.append(Check("local: agents", "ok", f"{spec.name} not installed (optional): {spec.detail}"))
    for root in agent_roots(settings):
        if not os.path.isdir(root):
            out.append(
                Check("local: agent roots", "fail", f"{root} is not a folder", "fix SESSIONS_MCP_LOCAL__AGENT_ROOTS")
            )
    return out
