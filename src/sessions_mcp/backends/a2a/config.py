"""The configured A2A agents: ``SESSIONS_MCP_A2A__AGENTS`` and ``SESSIONS_MCP_A2A__TOKENS`` parsed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import SecretStr

from ...errors import ConfigError
from ...settings import A2ASettings

AGENTS = "SESSIONS_MCP_A2A__AGENTS"
TOKENS = "SESSIONS_MCP_A2A__TOKENS"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """One remote agent: its name, the base URL of its card, and its bearer token (if any)."""

    name: str
    url: str
    token: SecretStr | None = None

    @property
    def origin(self) -> str:
        """``scheme://host:port`` of the base URL: the only place the token is sent."""
        return origin_of(self.url)


def origin_of(url: str) -> str:
    """The origin of a URL, lower-cased, with the default port made explicit."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{port}"


def _pairs(text: str, setting: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not value or not _NAME.match(name):
            shown = name if setting == TOKENS else item
            raise ConfigError(f"{setting}: {shown!r} is not name=value (names are lower-case [a-z0-9_-]+)")
        out.append((name, value))
    return out


def parse_agents(settings: A2ASettings) -> list[AgentConfig]:
    """The agents in configuration order (the first is the default); raises :class:`ConfigError`."""
    agents: dict[str, str] = {}
    for name, url in _pairs(settings.agents, AGENTS):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{AGENTS}: the URL of agent {name!r} must be http(s)://host[:port][/path] (got {url!r})")
        if name in agents:
            raise ConfigError(f"{AGENTS}: agent {name!r} is named twice")
        agents[name] = url.rstrip("/")
    if not agents:
        raise ConfigError(f"{AGENTS} is empty; set it to name=URL pairs, e.g. helper=http://127.0.0.1:9999")
    tokens: dict[str, SecretStr] = {}
    if settings.tokens is not None:
        for name, token in _pairs(settings.tokens.get_secret_value(), TOKENS):
            if name not in agents:
                raise ConfigError(f"{TOKENS} names agent {name!r}, which {AGENTS} does not configure")
            tokens[name] = SecretStr(token)
    return [AgentConfig(name, url, tokens.get(name)) for name, url in agents.items()]
