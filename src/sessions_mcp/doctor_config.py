"""``doctor`` checks of the configuration: what is in effect, HTTP authentication, the local agent."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .diagnostics import Check
from .errors import SessionsError

if TYPE_CHECKING:
    from .settings import Settings


def config_checks(settings: Settings) -> list[Check]:
    """What configuration is in effect (never values of secrets)."""
    from .settings import default_config_path

    default = settings.backends[0]
    listed = ", ".join(f"{b} (default)" if b == default else b for b in settings.backends)
    cfg = default_config_path()
    where = f"config file {cfg}" if cfg.is_file() else f"no config file at {cfg} (environment and defaults)"
    checks = [Check("configuration", "ok", f"backends: {listed}; {where}")]
    return [*checks, *http_checks(settings), *connection_checks(settings)]


def connection_checks(settings: Settings) -> list[Check]:
    """Whether the descriptor limit leaves room for the HTTP connection cap (HTTP settings only)."""
    http = settings.http
    if not (http.tokens or http.tokens_file or http.jwt_public_key or http.jwks_url or http.host != "127.0.0.1"):
        return []
    from .http_guard import capacity_note

    near, what, fix = capacity_note(http.max_connections)
    return [Check("http: connections", "warn" if near else "ok", what, fix)]


def http_checks(settings: Settings) -> list[Check]:
    """HTTP authentication, when any HTTP setting says the server is meant to be reached over HTTP."""
    http = settings.http
    if not (http.tokens or http.tokens_file or http.jwt_public_key or http.jwks_url or http.host != "127.0.0.1"):
        return []
    from .auth import build_auth
    from .http_app import check_bind

    try:
        auth = build_auth(http)
        check_bind(http, auth)
    except SessionsError as exc:
        return [Check("http: auth", "fail", str(exc), "change the setting named above (docs/http-and-auth.md)")]
    if auth is None:
        return [
            Check("http: auth", "ok", f"none configured; {http.host} is loopback, so only this machine can connect")
        ]
    kinds: list[str] = []
    if auth.static_tokens:
        kinds.append(f"{len(auth.static_tokens)} static token(s)")
    if http.jwt_public_key or http.jwks_url:
        kinds.append("JWT via " + ("JWKS " + http.jwks_url if http.jwks_url else "a public key"))
    return [Check("http: auth", "ok", f"{' and '.join(kinds)}; binding {http.host}:{http.port}")]


def local_agent_checks(settings: Settings) -> list[Check]:
    """Fallback checks of the local agent, used when the local backend has no checks of its own."""
    local = settings.local
    if local.agent == "none":
        return [
            Check(
                "local: agent",
                "ok",
                "none: sessions are a mailbox another MCP client answers "
                "(set SESSIONS_MCP_LOCAL__AGENT=command or openai to attach an agent)",
            )
        ]
    if local.agent == "command":
        import shlex

        try:
            argv = shlex.split(local.agent_command)
        except ValueError as exc:
            return [
                Check(
                    "local: agent",
                    "fail",
                    f"SESSIONS_MCP_LOCAL__AGENT_COMMAND does not parse: {exc}",
                    "fix the quoting in SESSIONS_MCP_LOCAL__AGENT_COMMAND",
                )
            ]
        if not argv:
            return [
                Check(
                    "local: agent",
                    "fail",
                    "agent is 'command' but no command is set",
                    "set SESSIONS_MCP_LOCAL__AGENT_COMMAND, e.g. 'claude -p'",
                )
            ]
        found = shutil.which(argv[0])
        if found is None:
            return [
                Check(
                    "local: agent",
                    "fail",
                    f"command {argv[0]!r} is not on PATH",
                    "install it, or give its full path in SESSIONS_MCP_LOCAL__AGENT_COMMAND",
                )
            ]
        checks = [Check("local: agent", "ok", f"command {argv[0]} ({found})")]
        cwd = local.agent_cwd
        if cwd and "{" not in cwd and not Path(cwd).expanduser().is_dir():
            checks.append(
                Check(
                    "local: agent folder",
                    "fail",
                    f"SESSIONS_MCP_LOCAL__AGENT_CWD {cwd} is not a folder",
                    "create it, or use a path with {session_id} (created per session)",
                )
            )
        return checks
    out: list[Check] = []
    if not local.openai_model:
        out.append(
            Check(
                "local: agent", "fail", "agent is 'openai' but no model is set", "set SESSIONS_MCP_LOCAL__OPENAI_MODEL"
            )
        )
    else:
        out.append(
            Check("local: agent", "ok", f"openai-compatible {local.openai_base_url}, model {local.openai_model}")
        )
    loopback = any(h in local.openai_base_url for h in ("://127.0.0.1", "://localhost", "://[::1]"))
    if local.openai_api_key is None and not loopback:
        out.append(
            Check(
                "local: agent key",
                "warn",
                "no API key set for a remote endpoint",
                "set OPENAI_API_KEY (or SESSIONS_MCP_LOCAL__OPENAI_API_KEY)",
            )
        )
    return out
