"""Named agents: the seven zero-config presets, the configured ``[agents.<name>]``, and the
first-stage ``command`` / ``openai`` agents, resolved once into :class:`AgentSpec` objects.

A preset is *available* when the executable it runs is on ``PATH`` (or its ``COMMAND`` setting
points at one); otherwise ``detail`` says what to install. A configured agent of the same name
overrides a preset (and may reuse its ACP quirks by keeping the preset's name).
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ...errors import quote

if TYPE_CHECKING:
    from ...settings import AgentSettings, LocalSettings

Kind = Literal["acp", "command", "openai"]
Policy = Literal["ask", "allow", "deny"]


@dataclass(frozen=True, slots=True)
class Preset:
    """How sessions-mcp runs one well-known coding agent over ACP (see docs/local-agents.md)."""

    name: str
    argv: tuple[str, ...]
    install: str
    """What to install when the executable is missing."""
    alternatives: tuple[tuple[str, ...], ...] = ()
    """Other command lines that speak the same ACP (an older adapter), tried when ``argv`` is missing."""
    ask_modes: tuple[str, ...] = ()
    """ACP session modes where the agent asks before acting, best first; the first one offered is set."""
    env: tuple[tuple[str, str], ...] = ()
    """Variables added to the agent's environment (only when the server's environment lacks them)."""
    config: tuple[tuple[str, str], ...] = ()
    """ACP config options set after session/new and session/load (``id``, ``value``), when offered."""
    model_flag: str = ""
    """Command-line flag that picks the model, for agents without an ACP model option."""
    reload_same_minute_bug: bool = False
    """The agent loses a session reloaded in the UTC minute it was created (Gemini CLI 0.61)."""
    session_meta: str = ""
    """JSON object sent as ``_meta`` with session/new and session/load."""


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "claude",
            ("claude-agent-acp",),
            "npm install -g @agentclientprotocol/claude-agent-acp (the ACP adapter of Claude Code)",
            alternatives=(("claude-code-acp",),),
            ask_modes=("default",),
            # never the bypass mode: with IS_SANDBOX set the adapter offers it, and Claude Code then
            # refuses to start as root unless IS_SANDBOX=1
            session_meta='{"claudeCode": {"options": {"allowDangerouslySkipPermissions": false}}}',
        ),
        Preset(
            "codex",
            ("codex-acp",),
            "npm install -g @agentclientprotocol/codex-acp (the ACP adapter of Codex; it runs the installed codex)",
            ask_modes=("workspace-write", "read-only"),
        ),
        Preset(
            "gemini",
            ("gemini", "--acp"),
            "npm install -g @google/gemini-cli",
            ask_modes=("default",),
            model_flag="-m",
            reload_same_minute_bug=True,
        ),
        Preset("qwen", ("qwen", "--acp"), "npm install -g @qwen-code/qwen-code", ask_modes=("default",)),
        Preset(
            "opencode",
            ("opencode", "acp"),
            "npm install -g opencode-ai",
            env=(("OPENCODE_PERMISSION", '{"edit":"ask","bash":"ask","webfetch":"ask"}'),),
        ),
        Preset(
            "droid",
            ("droid", "exec", "--output-format", "acp"),
            "npm install -g @factory/cli (Factory droid; its ACP mode is `droid exec --output-format acp`)",
            ask_modes=("normal",),
        ),
        Preset(
            "copilot",
            ("copilot", "--acp", "--disable-client-telemetry"),
            "npm install -g @github/copilot",
            ask_modes=("https://agentclientprotocol.com/protocol/session-modes#agent", "agent"),
            config=(("allow_all", "off"),),
        ),
    )
}


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """One agent this server can run, with everything needed to start it."""

    name: str
    kind: Kind
    argv: tuple[str, ...] = ()
    cwd: str = ""
    model: str = ""
    permissions: Policy = "ask"
    timeout_s: float | None = None
    base_url: str = ""
    preset: Preset | None = None
    available: bool = True
    detail: str = ""
    source: Literal["preset", "configured", "legacy"] = "configured"
    env: dict[str, str] = field(default_factory=dict[str, str])


def _find(argv: tuple[str, ...]) -> str | None:
    return shutil.which(argv[0]) if argv else None


def _preset_spec(preset: Preset, conf: AgentSettings | None) -> AgentSpec:
    argv: tuple[str, ...] = preset.argv
    if conf is not None and conf.command.strip():
        argv = tuple(shlex.split(conf.command))
    elif _find(argv) is None:
        argv = next((alt for alt in preset.alternatives if _find(alt)), argv)
    found = _find(argv)
    detail = f"{argv[0]} ({found})" if found else f"{argv[0]} is not on PATH: {preset.install}"
    return AgentSpec(
        name=preset.name,
        kind="acp",
        argv=argv,
        cwd=conf.cwd if conf else "",
        model=conf.model if conf else "",
        permissions=conf.permissions if conf else "ask",
        timeout_s=conf.timeout_s if conf else None,
        preset=preset,
        available=found is not None,
        detail=detail,
        source="configured" if conf else "preset",
        env=dict(preset.env),
    )


def _configured_spec(name: str, conf: AgentSettings) -> AgentSpec:
    try:
        argv = tuple(shlex.split(conf.command))
    except ValueError as exc:
        return AgentSpec(
            name, conf.kind, available=False, detail=f"SESSIONS_MCP_AGENTS__{name.upper()}__COMMAND: {exc}"
        )
    if conf.kind == "openai":
        ok = bool(conf.model)
        return AgentSpec(
            name, "openai", model=conf.model, base_url=conf.base_url, timeout_s=conf.timeout_s, available=ok,
            permissions=conf.permissions,
            detail=f"model {conf.model}" if ok else f"set SESSIONS_MCP_AGENTS__{name.upper()}__MODEL",
        )  # fmt: skip
    if not argv:
        return AgentSpec(
            name,
            conf.kind,
            available=False,
            detail=f"no command line: set SESSIONS_MCP_AGENTS__{name.upper()}__COMMAND",
        )
    found = _find(argv)
    return AgentSpec(
        name, conf.kind, argv=argv, cwd=conf.cwd, model=conf.model, permissions=conf.permissions,
        timeout_s=conf.timeout_s, available=found is not None,
        detail=f"{argv[0]} ({found})" if found else f"{argv[0]} is not on PATH (SESSIONS_MCP_AGENTS__{name.upper()}__COMMAND)",
    )  # fmt: skip


def resolve_agents(local: LocalSettings, agents: dict[str, AgentSettings]) -> dict[str, AgentSpec]:
    """Every agent this server knows, by name: presets, configured agents, then ``command``/``openai``."""
    out: dict[str, AgentSpec] = {}
    for name, preset in PRESETS.items():
        conf = agents.get(name)
        if conf is None or conf.kind == "acp":
            out[name] = _preset_spec(preset, conf)
    for name, conf in agents.items():
        if name not in out:
            out[name] = _configured_spec(name, conf)
    if "command" not in out and (local.agent == "command" or local.agent_command.strip()):
        ok = bool(local.agent_command.strip())
        out["command"] = AgentSpec(
            "command", "command", cwd=local.agent_cwd, available=ok, source="legacy",
            detail="SESSIONS_MCP_LOCAL__AGENT_COMMAND" if ok else "set SESSIONS_MCP_LOCAL__AGENT_COMMAND",
        )  # fmt: skip
    if "openai" not in out and (local.agent == "openai" or local.openai_model.strip()):
        ok = bool(local.openai_model.strip())
        out["openai"] = AgentSpec(
            "openai", "openai", model=local.openai_model, available=ok, source="legacy",
            detail=f"model {local.openai_model}" if ok else "set SESSIONS_MCP_LOCAL__OPENAI_MODEL",
        )  # fmt: skip
    return out


def agent_roots(local: LocalSettings) -> list[str]:
    """The folders ``create_session(workdir=...)`` may use (resolved, absolute)."""
    roots = local.agent_roots or [os.getcwd()]
    return [os.path.realpath(os.path.expanduser(r)) for r in roots]


def check_workdir(path: str, roots: list[str]) -> str:
    """``path`` resolved, when it is an existing folder inside one of ``roots``; else ValueError saying why."""
    real = os.path.realpath(os.path.expanduser(path))
    if not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
        raise ValueError(
            f"workdir {quote(path)} is outside the folders agents may use ({', '.join(roots)}); pick a folder inside "
            "them or extend SESSIONS_MCP_LOCAL__AGENT_ROOTS"
        )
    if not os.path.isdir(real):
        raise ValueError(f"workdir {quote(path)} is not an existing folder; create it first")
    return real
