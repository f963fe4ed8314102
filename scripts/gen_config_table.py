"""Generate the configuration reference from the settings model.

Two places describe every setting and must never drift from ``sessions_mcp.settings``:

- the table in ``README.md`` between ``<!-- config-table:start -->`` and ``<!-- config-table:end -->``;
- ``packages[0].environmentVariables`` (and the versions) in ``server.json``.

Usage::

    python scripts/gen_config_table.py           # rewrite both
    python scripts/gen_config_table.py --check   # exit 1 when either is out of date (tests call this)
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SERVER_JSON = ROOT / "server.json"
START = "<!-- config-table:start -->"
END = "<!-- config-table:end -->"
PREFIX = "SESSIONS_MCP_"

ALIASES: dict[str, str] = {
    "factory.api_key": "FACTORY_API_KEY",
    "local.openai_api_key": "OPENAI_API_KEY",
}
"""Un-prefixed names read as their vendors spell them (see ``settings.load_settings``)."""

FLAGS: dict[str, str] = {
    "backends": "--backends",
    "log_level": "--log-level",
    "local.db": "--db",
    "http.host": "--host",
    "http.port": "--port",
    "http.stateless": "--stateless",
}
"""Command-line flags that set a setting (they win over everything else)."""

FALLBACK_DESCRIPTIONS: dict[str, str] = {
    "log_level": "Log level on stderr: DEBUG, INFO, WARNING, ERROR.",
    "factory.base_url": "Factory API.",
    "factory_app.base_url": "Factory web app (mirror target).",
    "factory_app.token": "Token of the Factory web app.",
    "fabro.jwt_issuer": "JWT iss claim.",
    "fabro.jwt_ttl_s": "Lifetime of each minted JWT (seconds).",
    "fabro.timeout_s": "Read timeout of one HTTP request.",
    "http.host": "Bind address. Anything but loopback needs auth configured.",
    "http.port": "TCP port; /mcp (streamable HTTP) and /sse share it.",
    "http.stateless": "No protocol sessions, for replicas behind a load balancer.",
    "http.jwks_url": "JWKS URL to verify bearer JWTs.",
    "http.jwt_issuer": "Required JWT iss.",
    "http.jwt_audience": "Required JWT aud.",
    "http.allowed_hosts": "Host headers accepted (DNS-rebinding protection), comma list.",
    "http.allowed_origins": "Origin headers accepted, comma list.",
    "http.max_body_bytes": "Largest request body accepted.",
}


@dataclass(frozen=True)
class Setting:
    """One leaf setting of the model."""

    key: str
    """Dotted path, e.g. ``local.db``."""
    env: str
    alias: str | None
    kind: str
    default: str
    description: str
    secret: bool
    choices: list[str] | None
    section: str
    templated: bool = False
    """Part of a named table (``[agents.<name>]``): README only, server.json lists literal names."""


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``| None``, and whether it was optional."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _kind(annotation: Any) -> tuple[str, list[str] | None]:
    inner, _ = _unwrap(annotation)
    if inner is SecretStr:
        return "secret", None
    if get_origin(inner) is Literal:
        return "choice", [str(a) for a in get_args(inner)]
    if get_origin(inner) is list:
        return "comma list", None
    return {bool: "boolean", int: "integer", float: "number", str: "text"}.get(inner, "text"), None


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join(str(v) for v in typing.cast("list[Any]", value))
    return str(value)


def settings_list() -> list[Setting]:
    """Every leaf setting, in model order."""
    from sessions_mcp.settings import Settings

    out: list[Setting] = []

    def leaf(key: str, env: str, field: FieldInfo, section: str, templated: bool = False) -> None:
        kind, choices = _kind(field.annotation)
        out.append(
            Setting(
                key=key,
                env=env,
                alias=ALIASES.get(key),
                kind=kind,
                default=_default(field),
                description=(field.description or FALLBACK_DESCRIPTIONS.get(key, "")).strip(),
                secret=kind == "secret",
                choices=choices,
                section=section,
                templated=templated,
            )
        )

    for name, field in Settings.model_fields.items():
        inner, _ = _unwrap(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            for sub, subfield in inner.model_fields.items():
                leaf(f"{name}.{sub}", f"{PREFIX}{name.upper()}__{sub.upper()}", subfield, name)
        elif get_origin(inner) is dict:
            model = get_args(inner)[1]  # dict[str, Model]: one table per name, e.g. [agents.<name>]
            for sub, subfield in model.model_fields.items():
                env = f"{PREFIX}{name.upper()}__<NAME>__{sub.upper()}"
                leaf(f"{name}.<name>.{sub}", env, subfield, name, templated=True)
        else:
            leaf(name, f"{PREFIX}{name.upper()}", field, "")
    return out


def _section_title(section: str) -> str:
    from sessions_mcp.settings import Settings

    if not section:
        return "General"
    model = Settings.model_fields[section].annotation
    if get_origin(model) is dict:
        model = get_args(model)[1]
    doc = (getattr(model, "__doc__", "") or "").strip().splitlines()
    return f"`{section}`: {doc[0].rstrip('.')}" if doc else f"`{section}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table() -> str:
    """The Markdown block that goes between the README markers (markers excluded)."""
    lines: list[str] = [
        "<!-- generated by scripts/gen_config_table.py from src/sessions_mcp/settings.py; do not edit by hand -->",
    ]
    current: str | None = None
    for s in settings_list():
        if s.section != current:
            current = s.section
            where = f"TOML table `[{s.section}]`" if s.section else "top level of the TOML file"
            if s.templated:
                where = f"TOML tables `[{s.section}.<name>]`"
            lines += [
                "",
                f"**{_section_title(s.section)}** ({where})",
                "",
                "| Environment variable | Type | Default | Description |",
                "|---|---|---|---|",
            ]
        name = f"`{s.env}`"
        if s.alias:
            name += f" or `{s.alias}`"
        flag = FLAGS.get(s.key)
        if flag:
            name += f" (flag `{flag}`)"
        kind = " \\| ".join(f"`{c}`" if c else '`""`' for c in s.choices) if s.choices else s.kind
        default = f"`{s.default}`" if s.default else "unset"
        lines.append(f"| {name} | {kind} | {_cell(default)} | {_cell(s.description)} |")
    return "\n".join(lines) + "\n"


def env_vars() -> list[dict[str, Any]]:
    """``environmentVariables`` for server.json: every setting, none required (zero config works)."""
    out: list[dict[str, Any]] = []
    for s in settings_list():
        if s.templated:
            continue
        names = [s.alias, s.env] if s.alias else [s.env]
        for name in names:
            item: dict[str, Any] = {
                "name": name,
                "description": s.description or s.key,
                "isRequired": False,
                "isSecret": s.secret,
            }
            if name == s.env and s.alias:
                item["description"] = f"{item['description']} Same as {s.alias}."
            if s.kind in ("integer", "number"):
                item["format"] = "number"
            elif s.kind == "boolean":
                item["format"] = "boolean"
            if s.default and not s.secret:
                item["default"] = s.default
            if s.choices:
                item["choices"] = [c for c in s.choices if c]  # "" means unset, i.e. leave it out
            out.append(item)
    return out


def package_version() -> str:
    """The version in pyproject.toml."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def updated_readme(text: str) -> str:
    """README text with the generated block replaced."""
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"README.md must contain {START} and {END}")
    return f"{head}{START}\n{render_table()}{END}{tail}"


def updated_server_json(text: str) -> str:
    """server.json text with the environment variables and versions regenerated."""
    data = json.loads(text)
    version = package_version()
    data["version"] = version
    for package in data.get("packages", []):
        if package.get("registryType") == "pypi":
            package["version"] = version
            package["environmentVariables"] = env_vars()
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or ``--check``) README.md and server.json."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report whether the files are up to date")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for path, update in ((README, updated_readme), (SERVER_JSON, updated_server_json)):
        current = path.read_text()
        wanted = update(current)
        if current != wanted:
            stale.append(path.name)
            if not args.check:
                path.write_text(wanted)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)}; run: python scripts/gen_config_table.py", file=sys.stderr)
        return 1
    if stale and not args.check:
        print(f"updated {', '.join(stale)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
