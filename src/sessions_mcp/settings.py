"""Settings: environment (``SESSIONS_MCP_*``, nested with ``__``), an optional TOML file, flags.

Read once at the edge (:mod:`sessions_mcp.cli`) and passed inward as plain objects. Precedence,
highest first: command-line flags, environment variables, the TOML file, defaults. The
un-prefixed ``FACTORY_API_KEY`` and ``OPENAI_API_KEY`` are honoured as their vendors name them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from platformdirs import user_config_dir, user_data_dir
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

APP_NAME = "sessions-mcp"


def default_db_path() -> Path:
    """Where the local store lives when ``SESSIONS_MCP_LOCAL__DB`` is not set."""
    return Path(user_data_dir(APP_NAME, appauthor=False)) / "sessions.db"


def default_config_path() -> Path:
    """Where the optional TOML configuration is looked for."""
    return Path(user_config_dir(APP_NAME, appauthor=False)) / "config.toml"


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


AGENT_NAME = re.compile(r"[a-z0-9_-]+")
"""What an agent name may be (``SESSIONS_MCP_AGENTS__<NAME>__...``, ``[agents.<name>]``)."""


class LocalSettings(BaseModel):
    """The embedded store and the optional agent that answers its sessions."""

    db: str = Field(default="", description="SQLite path, or a postgresql:// URL. Default: the user data dir.")
    busy_timeout_s: float = Field(default=10.0, gt=0, description="How long a write waits for another process's lock.")
    agent: str = Field(
        default="none",
        description="Default agent of new sessions: none (mailbox), command, openai, a preset or an [agents] name.",
    )
    agent_command: str = Field(default="", description="Command line run per user turn (split without a shell).")
    agent_input: Literal["stdin", "file", "none"] = Field(
        default="stdin",
        description="How the transcript JSON reaches the command: stdin, a file, or not at all.",
    )
    agent_cwd: str = Field(default="", description="Working directory of the agent command.")
    agent_timeout_s: float = Field(default=600.0, gt=0, description="Time limit of one agent turn.")
    agent_max_output: int = Field(default=1_000_000, gt=0, description="Characters of agent output kept per turn.")
    openai_base_url: str = Field(default="https://api.openai.com/v1", description="Includes /v1.")
    openai_model: str = Field(default="", description="Model name for the openai agent.")
    openai_api_key: SecretStr | None = Field(default=None, description="Also read from OPENAI_API_KEY.")
    openai_system: str = Field(default="", description="System prompt for the openai agent.")
    mirror: Literal["", "factory-app"] = Field(default="", description="Mirror local sessions to the Factory web app.")
    agent_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list[str],
        description="Comma list of folders create_session(workdir=...) may use. Default: the server's working directory.",
    )
    max_agents: int = Field(default=4, gt=0, description="Agent processes running at once; more turns queue.")
    input_timeout_s: float = Field(
        default=1800.0, gt=0, description="An agent's unanswered permission request or question is rejected after this."
    )

    _split_roots = field_validator("agent_roots", mode="before")(_split_csv)

    @field_validator("agent")
    @classmethod
    def _check_agent(cls, value: str) -> str:
        value = value.strip().lower() or "none"
        if not AGENT_NAME.fullmatch(value):
            raise ValueError(f"agent name {value!r} is not lower-case [a-z0-9_-]+")
        return value

    def db_location(self) -> str:
        """The configured database, or the default path."""
        return self.db or str(default_db_path())


class AgentSettings(BaseModel):
    """One named agent (``SESSIONS_MCP_AGENTS__<NAME>__*`` or ``[agents.<name>]``); overrides a preset."""

    kind: Literal["acp", "command", "openai"] = Field(
        default="acp", description="acp (Agent Client Protocol over stdio), command (a command line per turn), openai."
    )
    command: str = Field(default="", description="Command line (split without a shell); a preset's when empty.")
    cwd: str = Field(default="", description="Working folder when create_session gives no workdir.")
    model: str = Field(default="", description="Model the agent uses (ACP: its model option; openai: the model).")
    permissions: Literal["ask", "allow", "deny"] = Field(
        default="ask", description="ask: surface permission requests (needs_input); allow/deny: answer each at once."
    )
    timeout_s: float | None = Field(default=None, gt=0, description="Time limit of one turn (default: the local one).")
    base_url: str = Field(default="", description="openai kind: the endpoint including /v1.")


class FactorySettings(BaseModel):
    """Factory Sessions API v0."""

    api_key: SecretStr | None = Field(default=None, description="Also read from FACTORY_API_KEY.")
    base_url: str = Field(default="https://api.factory.ai")
    computer_id: str = Field(default="", description="Optional computer to run sessions on.")
    cwd: str = Field(default="", description="Optional working directory for new sessions.")
    timeout_s: float = Field(default=30.0, gt=0, description="Read timeout of one HTTP request.")


class FactoryAppSettings(BaseModel):
    """The Factory web app (the seed's API), used only as a mirror of local sessions."""

    base_url: str = Field(default="https://app.factory.ai")
    token: SecretStr | None = None


class FabroSettings(BaseModel):
    """Fabro sessions API."""

    base_url: str = Field(default="", description="Fabro server URL, e.g. http://127.0.0.1:3000.")
    api_prefix: str = Field(default="/api/v1", description="Path prefix; '' for March 2026 builds.")
    token: SecretStr | None = Field(default=None, description="Static bearer token.")
    jwt_private_key: SecretStr | None = Field(default=None, description="Ed25519 PEM text or a path to a PEM file.")
    jwt_subject: str = Field(default="", description="JWT sub, e.g. https://github.com/<user>.")
    jwt_issuer: str = Field(default="fabro-web")
    jwt_ttl_s: int = Field(default=30, gt=0)
    client_cert: str = Field(default="", description="Path to a client certificate (mTLS).")
    client_key: str = Field(default="", description="Path to the client certificate's key (mTLS).")
    ca_cert: str = Field(default="", description="CA bundle to verify the Fabro server.")
    timeout_s: float = Field(default=30.0, gt=0)


class A2ASettings(BaseModel):
    """Remote agents that speak the Agent2Agent protocol (A2A 1.0, 0.3 fallback)."""

    agents: str = Field(
        default="", description="Comma list of name=URL (the base URL serving /.well-known/agent-card.json)."
    )
    tokens: SecretStr | None = Field(default=None, description="Comma list of name=token (bearer, per agent).")
    timeout_s: float = Field(default=30.0, gt=0, description="Time limit of one HTTP request to an agent.")
    task_timeout_s: float = Field(
        default=3600.0, gt=0, description="How long a remote task may run before the session is failed."
    )
    poll_max_s: float = Field(default=5.0, gt=0, description="Longest pause between GetTask polls.")
    card_ttl_s: float = Field(default=300.0, ge=0, description="How long an agent card is cached.")


class HttpSettings(BaseModel):
    """Streamable HTTP / SSE transport, authentication and limits."""

    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    stateless: bool = False
    tokens: SecretStr | None = Field(default=None, description="Comma list of principal=token pairs.")
    tokens_file: str = Field(default="", description="File with one principal=token per line.")
    jwt_public_key: str = Field(default="", description="PEM text or path of the JWT verification key.")
    jwks_url: str = ""
    jwt_issuer: str = ""
    jwt_audience: str = ""
    # NoDecode: environment values are comma lists, not JSON (split by the validator below).
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list[str])
    required_scopes: Annotated[list[str], NoDecode] = Field(
        default_factory=list[str], description="Scopes every JWT must carry (403 insufficient_scope otherwise)."
    )
    public_url: str = Field(default="", description="External URL of /mcp, for OAuth metadata.")
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    request_timeout_s: float = Field(
        default=20.0,
        gt=0,
        description="A connection that has not sent a whole request (headers and body) by then is closed.",
    )
    max_connections: int = Field(
        default=1000, gt=0, description="Open connections at most; lowered to fit the descriptor limit (ulimit -n)."
    )
    max_sessions_per_principal: int = Field(
        default=500, gt=0, le=10_000, description="Protocol sessions one principal may hold open (429 past it)."
    )
    session_idle_timeout_s: float = Field(
        default=300.0, gt=0, description="A protocol session with no request for this long is closed."
    )

    _split_hosts = field_validator("allowed_hosts", "allowed_origins", "required_scopes", mode="before")(_split_csv)


class Settings(BaseSettings):
    """Everything the server reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="SESSIONS_MCP_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    backends: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["local"], description="Enabled backends; first is default."
    )
    log_level: str = "WARNING"
    local: LocalSettings = Field(default_factory=LocalSettings)
    factory: FactorySettings = Field(default_factory=FactorySettings)
    factory_app: FactoryAppSettings = Field(default_factory=FactoryAppSettings)
    fabro: FabroSettings = Field(default_factory=FabroSettings)
    a2a: A2ASettings = Field(default_factory=A2ASettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    agents: dict[str, AgentSettings] = Field(
        default_factory=dict[str, AgentSettings], description="Named agents of the local backend, by name."
    )

    @field_validator("agents")
    @classmethod
    def _check_agent_names(cls, value: dict[str, AgentSettings]) -> dict[str, AgentSettings]:
        bad = [name for name in value if not AGENT_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"agent name(s) {bad} are not lower-case [a-z0-9_-]+")
        return value

    _split_backends = field_validator("backends", mode="before")(_split_csv)

    @field_validator("backends")
    @classmethod
    def _check_backends(cls, value: list[str]) -> list[str]:
        from .backends import known_backends

        if not value:
            raise ValueError("SESSIONS_MCP_BACKENDS is empty; name at least one of: " + ", ".join(known_backends()))
        unknown = [v for v in value if v not in known_backends()]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; known: {', '.join(known_backends())}")
        return list(dict.fromkeys(value))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = os.environ.get("_SESSIONS_MCP_CONFIG_FILE", "")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from the environment, ``config_file`` (TOML) and flag ``overrides``.

    Raises :class:`~sessions_mcp.errors.ConfigError` with the offending setting named.
    """
    from pydantic import ValidationError

    from .errors import ConfigError

    path = Path(config_file) if config_file else default_config_path()
    if config_file and not path.is_file():
        raise ConfigError(f"config file {str(path)!r} (--config) does not exist")
    previous = os.environ.get("_SESSIONS_MCP_CONFIG_FILE")
    os.environ["_SESSIONS_MCP_CONFIG_FILE"] = str(path) if path.is_file() else ""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None
    except Exception as exc:  # a TOML syntax error, say
        raise ConfigError(f"cannot read configuration {str(path)!r}: {exc}") from None
    finally:
        if previous is None:
            os.environ.pop("_SESSIONS_MCP_CONFIG_FILE", None)
        else:
            os.environ["_SESSIONS_MCP_CONFIG_FILE"] = previous
    if settings.factory.api_key is None and os.environ.get("FACTORY_API_KEY"):
        settings.factory.api_key = SecretStr(os.environ["FACTORY_API_KEY"])
    if settings.local.openai_api_key is None and os.environ.get("OPENAI_API_KEY"):
        settings.local.openai_api_key = SecretStr(os.environ["OPENAI_API_KEY"])
    return settings


def _explain(exc: Any) -> str:
    lines: list[str] = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        env = "SESSIONS_MCP_" + "__".join(p.upper() for p in loc) if loc else "SESSIONS_MCP_*"
        lines.append(f"{env}: {err.get('msg', 'invalid')}")
    return "invalid configuration: " + "; ".join(lines)
