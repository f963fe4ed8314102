"""MCP hosts: where each keeps its server list, the entry that starts sessions-mcp, ``setup`` and the doctor check.

``sessions-mcp setup <host>`` adds (or updates) the ``sessions`` entry in the host's user-level
configuration file, keeping every other key and every other server as it is; ``--print`` prints
the snippet instead (the README's snippets are exactly that output). :func:`host_checks` tells the
doctor which hosts already start sessions-mcp. The facts per host (file, key, entry shape, how it
pre-approves tools) were measured with the versions listed in docs/clients.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .diagnostics import Check
from .errors import SessionsError

DEFAULT_NAME = "sessions"
LOCAL_PLACEHOLDER = "/ABSOLUTE/PATH/TO/sessions-mcp/.venv/bin/sessions-mcp"
"""What the README shows instead of the real path of a local checkout's binary."""


class SetupError(SessionsError):
    """A host's configuration cannot be read or would lose something if written."""


@dataclass(frozen=True)
class Launch:
    """How the host reaches sessions-mcp: a command (stdio) or a URL (streamable HTTP)."""

    command: str = "uvx"
    args: tuple[str, ...] = ("sessions-mcp",)
    env: Mapping[str, str] = field(default_factory=dict[str, str])
    url: str | None = None
    token_env: str | None = None
    """Environment variable holding the bearer token (HTTP); the host reads it, never this file."""


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def _app_support(*parts: str) -> Path:
    """The per-user application folder desktop apps use (macOS, Windows, Linux)."""
    if sys.platform == "darwin":
        return _home().joinpath("Library", "Application Support", *parts)
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or _home() / "AppData" / "Roaming").joinpath(*parts)
    return Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config").joinpath(*parts)


def _bearer(launch: Launch, template: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + template.format(launch.token_env)} if launch.token_env else {}


def _headers(launch: Launch, template: str) -> dict[str, Any]:
    return {"headers": _bearer(launch, template)} if launch.token_env else {}


def _header_flag(launch: Launch) -> str:
    """The ``--header`` option of the add commands that take one (none without a token)."""
    return f' --header "Authorization: Bearer ${launch.token_env}"' if launch.token_env else ""


def _env_flags(launch: Launch, flag: str) -> str:
    return "".join(f" {flag} {k}={shlex.quote(v)}" for k, v in launch.env.items())


def _command(launch: Launch) -> str:
    return shlex.join([launch.command, *launch.args])


def _stdio(launch: Launch, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"command": launch.command, "args": list(launch.args)}
    if launch.env:
        entry["env"] = dict(launch.env)
    return entry | extra


@dataclass(frozen=True)
class Host:
    """One MCP host: its user-level config file and how a server entry looks there."""

    name: str
    label: str
    path: Callable[[], Path]
    key: str
    entry: Callable[[Launch], dict[str, Any]]
    fmt: str = "json"
    add: Callable[[Launch, str], str] | None = None
    """The host's own one-line add command, when it has one."""
    note: str = ""

    def snippet(self, launch: Launch, name: str = DEFAULT_NAME) -> str:
        """The configuration to add, as it appears in the file (what ``setup --print`` prints)."""
        entry = self.entry(launch)
        if self.fmt == "toml":
            return toml_table(f"{self.key}.{name}", entry)
        return dump_json({self.key: {name: entry}})


def _typed_entry(template: str) -> Callable[[Launch], dict[str, Any]]:
    """``type: http`` with the URL, else ``type: stdio`` (Claude Code, droid, VS Code)."""

    def entry(launch: Launch) -> dict[str, Any]:
        if launch.url:
            return {"type": "http", "url": launch.url} | _headers(launch, template)
        return {"type": "stdio"} | _stdio(launch)

    return entry


def _claude_add(launch: Launch, name: str) -> str:
    if launch.url:
        return f"claude mcp add --scope user --transport http {name} {launch.url}{_header_flag(launch)}"
    return f"claude mcp add --scope user {name}{_env_flags(launch, '-e')} -- {_command(launch)}"


def _codex_entry(launch: Launch) -> dict[str, Any]:
    # exec runs with approval policy "never": without "approve" it rejects every tool that is not
    # read-only; without required = true it starts the turn without a server slower than ~1 s.
    # Its own tool-call limit (300 s) is above every wait the server allows, so it stays as it is.
    common: dict[str, Any] = {"required": True, "default_tools_approval_mode": "approve"}
    if launch.url:
        token = {"bearer_token_env_var": launch.token_env} if launch.token_env else {}
        return {"url": launch.url} | token | common
    entry = _stdio(launch)
    env = entry.pop("env", None)
    return entry | {"startup_timeout_sec": 60} | common | ({"env": env} if env else {})


def _codex_add(launch: Launch, name: str) -> str:
    if launch.url:
        token = f" --bearer-token-env-var {launch.token_env}" if launch.token_env else ""
        return f"codex mcp add {name} --url {launch.url}{token}"
    return f"codex mcp add {name}{_env_flags(launch, '--env')} -- {_command(launch)}"


def _gemini_entry(launch: Launch) -> dict[str, Any]:
    # trust: headless runs (-p) do not even offer an untrusted server's tools to the model
    if launch.url:
        return {"httpUrl": launch.url} | _headers(launch, "${{{}}}") | {"trust": True}
    return _stdio(launch, trust=True)


def _gemini_like(cli: str, label: str) -> Host:
    """Gemini CLI, or a fork of it (Qwen Code) that keeps its config layout and add command."""

    def path() -> Path:
        return _home() / f".{cli}" / "settings.json"

    return Host(cli, label, path, "mcpServers", _gemini_entry, add=_gemini_like_add(cli))


def _gemini_like_add(cli: str) -> Callable[[Launch, str], str]:
    def add(launch: Launch, name: str) -> str:
        if launch.url:
            return f"{cli} mcp add --scope user --trust --transport http {name} {launch.url}{_header_flag(launch)}"
        return f"{cli} mcp add --scope user --trust{_env_flags(launch, '-e')} {name} {_command(launch)}"

    return add


def _copilot_entry(launch: Launch) -> dict[str, Any]:
    if launch.url:
        return {"type": "http", "url": launch.url} | _headers(launch, "${{{}}}") | {"tools": ["*"]}
    return {"type": "local"} | _stdio(launch, tools=["*"])


def _copilot_add(launch: Launch, name: str) -> str:
    if launch.url:
        return f"copilot mcp add --transport http{_header_flag(launch)} {name} {launch.url}"
    return f"copilot mcp add{_env_flags(launch, '--env')} {name} -- {_command(launch)}"


def _droid_add(launch: Launch, name: str) -> str:
    if launch.url:
        return f"droid mcp add --type http{_header_flag(launch)} {name} {launch.url}"
    return f"droid mcp add{_env_flags(launch, '--env')} {name} {_command(launch)}"


def _plain_entry(url_key: str, var: str) -> Callable[[Launch], dict[str, Any]]:
    def entry(launch: Launch) -> dict[str, Any]:
        if launch.url:
            return {url_key: launch.url} | _headers(launch, var)
        return _stdio(launch)

    return entry


def _desktop_entry(launch: Launch) -> dict[str, Any]:
    if launch.url:
        raise SetupError("Claude Desktop starts servers by command only; add a URL under Settings → Connectors")
    return _stdio(launch)


HOSTS: dict[str, Host] = {
    h.name: h
    for h in (
        Host(
            "claude-code",
            "Claude Code",
            lambda: Path(os.environ.get("CLAUDE_CONFIG_DIR") or _home()) / ".claude.json",
            "mcpServers",
            _typed_entry("${{{}}}"),
            add=_claude_add,
            note="headless: claude -p … --allowedTools mcp__sessions",
        ),
        Host(
            "codex",
            "Codex",
            lambda: Path(os.environ.get("CODEX_HOME") or _home() / ".codex") / "config.toml",
            "mcp_servers",
            _codex_entry,
            fmt="toml",
            add=_codex_add,
            note="the add command cannot set required/default_tools_approval_mode; prefer setup",
        ),
        _gemini_like("gemini", "Gemini CLI"),
        _gemini_like("qwen", "Qwen Code"),
        Host(
            "copilot",
            "GitHub Copilot CLI",
            lambda: _home() / ".copilot" / "mcp-config.json",
            "mcpServers",
            _copilot_entry,
            add=_copilot_add,
            note="headless: copilot -p … --allow-tool sessions",
        ),
        Host(
            "droid",
            "Factory droid",
            lambda: _home() / ".factory" / "mcp.json",
            "mcpServers",
            _typed_entry("${{{}}}"),
            add=_droid_add,
            note="headless: droid exec --auto high …",
        ),
        Host(
            "claude-desktop",
            "Claude Desktop",
            lambda: _app_support("Claude", "claude_desktop_config.json"),
            "mcpServers",
            _desktop_entry,
        ),
        Host(
            "cursor",
            "Cursor",
            lambda: _home() / ".cursor" / "mcp.json",
            "mcpServers",
            _plain_entry("url", "${{env:{}}}"),
        ),
        Host(
            "vscode",
            "VS Code",
            lambda: _app_support("Code", "User", "mcp.json"),
            "servers",
            _typed_entry("${{env:{}}}"),
        ),
        Host(
            "windsurf",
            "Windsurf",
            lambda: _home() / ".codeium" / "windsurf" / "mcp_config.json",
            "mcpServers",
            _plain_entry("serverUrl", "${{env:{}}}"),
        ),
    )
}


def get_host(name: str) -> Host:
    """The host called ``name``, or an error listing the known ones."""
    try:
        return HOSTS[name]
    except KeyError:
        raise SetupError(f"unknown host {name!r}; choose one of: {', '.join(HOSTS)}") from None


def dump_json(data: Any) -> str:
    """JSON indented by two, with lists of plain values on one line (as people write these files)."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    return re.sub(
        r"\[\s*\n\s*([^\[\]{}]*?)\s*\n\s*\]", lambda m: "[" + re.sub(r",\s*\n\s*", ", ", m.group(1)) + "]", text
    )


# --- TOML (Codex) without a TOML writer: render one table, splice it into the text --------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"  # pyright: ignore[reportUnknownVariableType]
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def toml_table(dotted: str, entry: Mapping[str, Any]) -> str:
    """``entry`` as a TOML table ``[dotted]``; nested dicts become sub-tables after it."""
    head = ".".join(_toml_key(k) for k in dotted.split("."))
    lines = [f"[{head}]"]
    subs: list[str] = []
    for key, value in entry.items():
        if isinstance(value, Mapping):
            subs.append(toml_table(f"{dotted}.{key}", value))  # pyright: ignore[reportUnknownArgumentType]
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join([*lines, *("\n" + s for s in subs)])


def _without_toml_table(text: str, key: str, name: str) -> str:
    """``text`` without the ``[key.name]`` table and its sub-tables."""
    own = re.compile(r"\s*\[\s*" + re.escape(key) + r"\s*\.\s*(\"?)" + re.escape(name) + r"\1\s*(\.[^\]]*)?\]")
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("["):
            skipping = bool(own.match(line))
        if not skipping:
            out.append(line)
    return "".join(out)


# --- reading and writing a host's file ----------------------------------------------------------


def _load(host: Host, path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return {}
    try:
        data = tomllib.loads(text) if host.fmt == "toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise SetupError(
            f"{path} is not valid {host.fmt.upper()} ({exc}); fix it and rerun, or add the entry by hand "
            f"from 'sessions-mcp setup {host.name} --print'"
        ) from None
    if not isinstance(data, dict):
        raise SetupError(f"{path} does not hold a {host.fmt.upper()} object; fix it or move it aside, then rerun")
    return data  # pyright: ignore[reportUnknownVariableType]


def is_sessions_mcp(entry: Any, name: str = "") -> bool:
    """Whether server entry ``name`` starts sessions-mcp, or is a URL entry named like it."""
    if not isinstance(entry, dict):
        return False
    e = cast(dict[str, Any], entry)
    args = cast(list[Any], e["args"]) if isinstance(e.get("args"), list) else []
    words = [str(e.get("command", "")), *(str(a) for a in args)]
    if any(re.search(r"sessions[-_]mcp", w) for w in words):
        return True
    url = str(e.get("url") or e.get("httpUrl") or e.get("serverUrl") or "")
    return bool(url) and not e.get("command") and "sessions" in name.lower()


def configured(host: Host, path: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The (name, entry) pairs in ``host``'s file that start sessions-mcp."""
    data = _load(host, path or host.path())
    if not isinstance(data.get(host.key), dict):
        return []
    servers = cast(dict[str, Any], data[host.key])
    return [(n, e) for n, e in servers.items() if is_sessions_mcp(e, n)]


def write_entry(host: Host, launch: Launch, name: str = DEFAULT_NAME, path: Path | None = None) -> tuple[Path, bool]:
    """Add or update server ``name`` in ``host``'s file; returns (path, whether an entry was replaced).

    Every other key and server stays as it was. An entry called ``name`` that does not start
    sessions-mcp is never replaced: that is an error naming ``--name``.
    """
    path = path or host.path()
    data = _load(host, path)
    if not isinstance(data.get(host.key, {}), dict):
        raise SetupError(f"{path}: '{host.key}' is not a table of servers; fix it by hand, then rerun")
    servers = cast(dict[str, Any], data.get(host.key, {}))
    existing = servers.get(name)
    if existing is not None and not is_sessions_mcp(existing, name):
        raise SetupError(
            f"{path} already has a server called {name!r} that is not sessions-mcp; "
            "keep it and pass --name with another name"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if host.fmt == "toml":
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        if existing is not None:
            text = _without_toml_table(text, host.key, name)
            if name in (tomllib.loads(text).get(host.key) or {}):
                raise SetupError(f"{path} defines {host.key}.{name} inline; remove it by hand, then rerun")
        body = text.rstrip("\n") + ("\n\n" if text.strip() else "") + host.snippet(launch, name) + "\n"
        tomllib.loads(body)  # never write a file the host could not read
    else:
        data[host.key] = {**servers, name: host.entry(launch)}
        body = dump_json(data) + "\n"
    tmp = path.with_name(path.name + ".sessions-mcp.tmp")
    tmp.write_text(body, encoding="utf-8")
    if path.exists():
        os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    return path, existing is not None


def default_command() -> tuple[str, tuple[str, ...]]:
    """How this installation starts: the ``sessions-mcp`` script being run, else ``python -m sessions_mcp``.

    A script inside uv's cache (a ``uvx sessions-mcp setup`` run) would vanish; there ``uvx``
    itself is the command.
    """
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "sessions-mcp" and script.is_file():
        if re.search(r"[/\\]uv[/\\](archive|builds|environments)", str(script)):
            return "uvx", ("sessions-mcp",)
        return str(script), ()
    return sys.executable, ("-m", "sessions_mcp")


def run_setup(
    host_name: str,
    *,
    print_only: bool,
    name: str = DEFAULT_NAME,
    command: str | None = None,
    uvx: bool = False,
    env: Sequence[str] = (),
    url: str | None = None,
    token_env: str | None = None,
) -> int:
    """``sessions-mcp setup``: write (or print) ``host_name``'s entry for sessions-mcp."""
    host = get_host(host_name)
    pairs: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SetupError(f"--env takes KEY=VALUE, got {item!r}")
        pairs[key] = value
    if url:
        launch = Launch(url=url, token_env=token_env)
    elif uvx:
        launch = Launch(env=pairs)
    else:
        cmd, args = (command, ()) if command else default_command()
        launch = Launch(command=cmd, args=args, env=pairs)
    if print_only:
        print(host.snippet(launch, name))
        return 0
    path, replaced = write_entry(host, launch, name)
    verb = "updated" if replaced else "added"
    print(f"sessions-mcp: {verb} server {name!r} in {path} for {host.label}", file=sys.stderr)
    if host.note:
        print(f"  {host.note}", file=sys.stderr)
    return 0


def add_setup_parser(sub: Any, formatter_class: type[argparse.HelpFormatter], help_text: str) -> None:
    """Add the ``setup`` command to the ``sessions-mcp`` sub-command parsers."""
    setup = sub.add_parser(
        "setup", formatter_class=formatter_class, help=help_text,
        description="Add (or update) the 'sessions' server in a host's user configuration file, keeping every "
        "other setting and server as it is; --print prints the snippet instead. docs/clients.md says how "
        "each host treats long calls, errors and approvals.",
        epilog="hosts: " + ", ".join(f"{h.name} ({h.path()})" for h in HOSTS.values()) + "\n\nexamples:\n"
        "  sessions-mcp setup claude-code\n  sessions-mcp setup codex --print\n"
        "  sessions-mcp setup gemini --env SESSIONS_MCP_BACKENDS=local,factory\n"
        "  sessions-mcp setup cursor --url http://127.0.0.1:8765/mcp --token-env SESSIONS_MCP_TOKEN",
    )  # fmt: skip
    setup.add_argument("host", choices=list(HOSTS), metavar="HOST", help="one of: " + ", ".join(HOSTS))
    setup.add_argument("--print", dest="print_only", action="store_true", help="print the snippet, write nothing")
    setup.add_argument("--name", default="sessions", help="server name in the host (default: sessions)")
    setup.add_argument("--command", dest="server_command", metavar="PATH",
                       help="command that starts the server (default: this sessions-mcp)")  # fmt: skip
    setup.add_argument("--uvx", action="store_true", help="start the published package with 'uvx sessions-mcp'")
    setup.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE",
                       help="a setting for the server (repeatable); keep secrets in your shell instead")  # fmt: skip
    setup.add_argument("--url", help="connect over streamable HTTP to this URL instead of starting a process")
    setup.add_argument("--token-env", metavar="VAR",
                       help="with --url: environment variable the host reads the bearer token from")  # fmt: skip


def run_setup_command(args: argparse.Namespace) -> int:
    """``sessions-mcp setup`` with the parsed arguments of :func:`add_setup_parser`."""
    return run_setup(args.host, print_only=args.print_only, name=args.name, command=args.server_command,
                     uvx=args.uvx, env=args.env, url=args.url, token_env=args.token_env)  # fmt: skip


def host_checks() -> list[Check]:
    """One doctor line: which hosts start sessions-mcp, and any entry whose command is gone."""
    found: list[str] = []
    checks: list[Check] = []
    for host in HOSTS.values():
        path = host.path()
        try:
            entries = configured(host, path)
        except (SetupError, OSError) as exc:
            checks.append(Check(f"host: {host.name}", "warn", str(exc), f"fix {path}"))
            continue
        for server, entry in entries:
            found.append(f"{host.label} ({server!r} in {path})")
            command = str(entry.get("command") or "")
            if os.sep in command and not Path(command).exists():
                checks.append(
                    Check(
                        f"host: {host.name}",
                        "warn",
                        f"{path}: {server!r} runs {command}, which is gone",
                        f"rerun 'sessions-mcp setup {host.name}'",
                    )
                )
    summary = (
        Check("hosts", "ok", "sessions-mcp is configured in " + "; ".join(found))
        if found
        else Check(
            "hosts",
            "ok",
            f"no MCP host is configured to start sessions-mcp yet (sessions-mcp setup <host>: {', '.join(HOSTS)})",
        )
    )
    return [summary, *checks]
