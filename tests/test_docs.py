"""What a new user reads and what the registry reads: README, server.json, client snippets, --help."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
from mcp import Client
from pydantic import BaseModel, SecretStr

import sessions_mcp
from sessions_mcp.cli import main
from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SERVER = json.loads((ROOT / "server.json").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCHEMA_PATH = ROOT / "tests" / "data" / "server.schema.json"
SCHEMA_URL = "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
# sha256 of the registry's published 2025-12-11 schema; the vendored copy must be that file, byte for byte
SCHEMA_SHA256 = "3fba09590c99f61735d234822279f4223fab9e300c0a81e81c91ab62a4114de0"
CLIENTS = [
    "claude-desktop",
    "claude-code",
    "cursor",
    "vscode",
    "codex",
    "windsurf",
    "gemini",
    "qwen",
    "copilot",
    "droid",
]
ADD_COMMANDS = {"claude", "codex", "gemini", "qwen", "copilot", "droid"}
ADD_OPTIONS_WITH_VALUE = {"--scope", "-s", "--transport", "-t", "--type", "-e", "--env", "--header", "-H"}
LOCAL_BINARY = "/ABSOLUTE/PATH/TO/sessions-mcp/.venv/bin/sessions-mcp"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_table", ROOT / "scripts" / "gen_config_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def snippets() -> dict[str, tuple[str, str]]:
    """``<!-- snippet: NAME -->`` followed by a fenced block: name -> (language, code)."""
    found = re.findall(r"<!-- snippet: ([\w-]+) -->\n```(\w+)\n(.*?)\n```", README, flags=re.S)
    out: dict[str, tuple[str, str]] = {}
    for name, lang, code in found:
        assert name not in out, f"snippet {name} appears twice"
        out[name] = (lang, code)
    return out


# --- server.json -------------------------------------------------------------------------------


def test_vendored_schema_is_the_published_one() -> None:
    data = SCHEMA_PATH.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256
    assert json.loads(data)["$id"] == SCHEMA_URL


def test_server_json_is_valid_against_the_registry_schema() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(SERVER), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)
    assert SERVER["$schema"] == SCHEMA_URL


def test_the_schema_check_can_fail() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    bad = json.loads(json.dumps(SERVER)) | {"description": "x" * 101, "name": "no slash"}
    assert len(list(jsonschema.Draft7Validator(schema).iter_errors(bad))) == 2


def test_server_json_matches_the_package() -> None:
    version = PYPROJECT["project"]["version"]
    assert SERVER["version"] == version == sessions_mcp.__version__
    assert len(SERVER["description"]) <= 100
    [package] = SERVER["packages"]
    assert package["registryType"] == "pypi"
    assert package["identifier"] == PYPROJECT["project"]["name"] == "sessions-mcp"
    assert package["version"] == version
    assert package["transport"] == {"type": "stdio"}
    assert "sessions-mcp" in PYPROJECT["project"]["scripts"]


def test_readme_mcp_name_matches_server_json() -> None:
    names = re.findall(r"<!--\s*mcp-name:\s*(\S+)\s*-->", README)
    assert names == [SERVER["name"]]
    assert PYPROJECT["project"]["readme"] == "README.md"  # PyPI publishes it, where the registry looks


def _expected_env() -> dict[str, bool]:
    """Every environment variable the settings read -> whether it is a secret (walked independently)."""
    out: dict[str, bool] = {"FACTORY_API_KEY": True, "OPENAI_API_KEY": True}

    def is_secret(annotation: Any) -> bool:
        return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())

    for name, field in Settings.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            for sub, subfield in model.model_fields.items():
                out[f"SESSIONS_MCP_{name.upper()}__{sub.upper()}"] = is_secret(subfield.annotation)
        elif getattr(model, "__origin__", None) is dict:
            continue  # named tables ([agents.<name>]): README only, checked by test_named_agent_settings_are_read
        else:
            out[f"SESSIONS_MCP_{name.upper()}"] = is_secret(field.annotation)
    return out


def test_every_environment_variable_is_listed_with_the_right_flags() -> None:
    [package] = SERVER["packages"]
    listed = {v["name"]: v for v in package["environmentVariables"]}
    assert len(listed) == len(package["environmentVariables"]), "a variable is listed twice"
    expected = _expected_env()
    assert set(listed) == set(expected), f"missing {set(expected) - set(listed)}, extra {set(listed) - set(expected)}"
    for name, secret in expected.items():
        assert listed[name]["isSecret"] is secret, name
        assert listed[name]["isRequired"] is False, f"{name}: nothing is required, the local backend needs no setup"
        assert listed[name]["description"], name
    assert listed["FACTORY_API_KEY"]["isSecret"] and listed["SESSIONS_MCP_FABRO__TOKEN"]["isSecret"]
    assert not listed["SESSIONS_MCP_LOCAL__DB"]["isSecret"]


@pytest.mark.parametrize("name", sorted(_expected_env()))
def test_each_listed_variable_is_really_read(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    [package] = SERVER["packages"]
    item = next(v for v in package["environmentVariables"] if v["name"] == name)
    value = item.get("default") or (item.get("choices") or [""])[0] or ("7" if item.get("format") == "number" else "")
    if not value:
        value = "true" if item.get("format") == "boolean" else "value-for-test"
    monkeypatch.setenv(name, value)
    settings = load_settings(None)
    key = {"FACTORY_API_KEY": "factory.api_key", "OPENAI_API_KEY": "local.openai_api_key"}.get(name)
    path = key.split(".") if key else name.removeprefix("SESSIONS_MCP_").lower().split("__")
    got: Any = settings
    for part in path:
        got = getattr(got, part)
    if isinstance(got, SecretStr):
        got = got.get_secret_value()
    if isinstance(got, list):
        got = ",".join(str(x) for x in got)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    if isinstance(got, bool):
        got = str(got).lower()
    assert str(got) == value or float(got) == float(value)


# --- the generated configuration table ---------------------------------------------------------


def test_config_table_and_server_json_are_generated_from_the_settings() -> None:
    gen = _generator()
    assert gen.updated_readme(README) == README, "README config table drifted: run python scripts/gen_config_table.py"
    server_text = (ROOT / "server.json").read_text()
    assert gen.updated_server_json(server_text) == server_text, "server.json drifted: run scripts/gen_config_table.py"
    assert gen.main(["--check"]) == 0


def test_drift_is_detected() -> None:
    gen = _generator()
    row = next(line for line in README.splitlines() if line.startswith("| `SESSIONS_MCP_LOCAL__DB`"))
    assert gen.updated_readme(README.replace(row + "\n", "")) == README
    assert gen.updated_readme(README.replace(row + "\n", "")) != README.replace(row + "\n", "")
    server = json.loads((ROOT / "server.json").read_text())
    server["packages"][0]["environmentVariables"].pop()
    assert gen.updated_server_json(json.dumps(server)) != json.dumps(server)


def test_config_table_lists_every_setting() -> None:
    table = README.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0]
    for name in _expected_env():
        if name.startswith("SESSIONS_MCP_"):
            assert f"`{name}`" in table, name


# --- client snippets ---------------------------------------------------------------------------


def test_every_client_has_a_uvx_and_a_local_checkout_snippet() -> None:
    found = snippets()
    for client in CLIENTS:
        assert client in found and f"{client}-local" in found, client


def _server_entry(name: str, lang: str, code: str) -> dict[str, Any]:
    if lang == "json":
        data = json.loads(code)
        servers = data["servers"] if name.startswith("vscode") else data["mcpServers"]
        entry = servers["sessions"]
        if name.startswith("vscode"):
            assert entry["type"] == "stdio"
            for ref in re.findall(r"\$\{input:([\w-]+)\}", code):
                assert ref in {i["id"] for i in data.get("inputs", [])}, f"{name}: input {ref} is not declared"
            for item in data.get("inputs", []):
                assert item.get("password") is True, "secrets are asked for as passwords"
        return entry
    if lang == "toml":
        return tomllib.loads(code)["mcp_servers"]["sessions"]
    assert lang == "bash"
    return add_command_entry(code)


def add_command_entry(code: str) -> dict[str, Any]:
    """What a host's one-line ``<cli> mcp add`` command configures: name, command and args (or url)."""
    argv = shlex.split(code)
    assert argv[0] in ADD_COMMANDS and argv[1:3] == ["mcp", "add"], code
    rest = argv[3:]
    command: list[str] = []
    if "--" in rest:
        command = rest[rest.index("--") + 1 :]
        rest = rest[: rest.index("--")]
    positional: list[str] = []
    skip = False
    for word in rest:
        if skip:
            skip = False
        elif word in ADD_OPTIONS_WITH_VALUE or word in ("--url", "--bearer-token-env-var"):
            skip = True
        elif not word.startswith("-"):
            positional.append(word)
    name, *tail = positional
    assert name == "sessions", code
    command = command or tail
    return {"command": command[0], "args": command[1:]} if command else {"url": argv[argv.index("--url") + 1]}


@pytest.mark.parametrize("name", [c for client in CLIENTS for c in (client, f"{client}-local")])
def test_client_snippet_parses_and_starts_the_server(name: str) -> None:
    lang, code = snippets()[name]
    entry = _server_entry(name, lang, code)
    if name.endswith("-local"):
        assert entry["command"] == LOCAL_BINARY
        assert entry.get("args", []) == []
    else:
        assert entry["command"] == "uvx"
        assert entry["args"] == ["sessions-mcp"]
    for key, value in (entry.get("env") or {}).items():
        assert key in _expected_env(), f"{name}: {key} is not a setting"
        assert value.startswith("${") or key not in ("FACTORY_API_KEY", "OPENAI_API_KEY"), "no literal secrets"


def test_readme_toml_example_loads(tmp_path: Path) -> None:
    lang, code = snippets()["config-toml"]
    assert lang == "toml"
    path = tmp_path / "config.toml"
    path.write_text(code)
    settings = load_settings(path)
    assert settings.backends == ["local", "factory"]
    assert settings.local.agent == "command"
    assert settings.local.agent_command == "claude -p --output-format text"


def test_readme_setup_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README.split("## Set up")[1].split("\n## ")[0], flags=re.S)
    assert blocks == [
        "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/sessions-mcp",
        "bash scripts/test.sh",
    ]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def test_readme_links_point_at_files() -> None:
    for target in sorted(set(re.findall(r"\]\(((?:docs|scripts)/[^)#]+)", README))):
        assert (ROOT / target).is_file(), f"README links to missing {target}"
    for page in (
        "backend-local",
        "backend-factory",
        "backend-fabro",
        "backend-a2a",
        "local-agents",
        "http-and-auth",
        "troubleshooting",
        "tasks",
        "clients",
    ):
        assert f"(docs/{page}.md)" in README, page


@pytest.mark.anyio
async def test_readme_names_every_tool_resource_and_prompt(make_settings: Callable[..., Settings]) -> None:
    async with Client(build_server(make_settings())) as client:
        tools = [t.name for t in (await client.list_tools()).tools]
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
        resources = [str(r.uri) for r in (await client.list_resources()).resources]
    assert len(tools) == 8
    for name in tools:
        assert f"| `{name}` |" in README, name
    for name in prompts:
        assert f"`{name}(" in README, name
    for uri in [*templates, *resources]:
        assert f"`{uri}`" in README, uri


# --- --help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "doctor", "ls", "show", "tail", None])
def test_help_answers_the_common_questions(command: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--db" in text and "--backends" in text
    if command in ("doctor", "ls", "show", "tail", None):
        assert "example" in text
    if command in ("ls", "show", "tail"):
        assert "--principal" in text and "default: local" in text
    if command == "tail":
        assert "Ctrl-C" in text and "--lines" in text
    if command is None:
        assert "SESSIONS_MCP_LOCAL__DB" in text and "doctor" in text


def test_named_agent_settings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    table = README.split("<!-- config-table:start -->")[1].split("<!-- config-table:end -->")[0]
    for key in ("KIND", "COMMAND", "CWD", "MODEL", "PERMISSIONS", "TIMEOUT_S"):
        assert f"`SESSIONS_MCP_AGENTS__<NAME>__{key}`" in table, key
    monkeypatch.setenv("SESSIONS_MCP_AGENTS__MY-BOT__KIND", "command")
    monkeypatch.setenv("SESSIONS_MCP_AGENTS__MY-BOT__COMMAND", "bot --go")
    monkeypatch.setenv("SESSIONS_MCP_AGENTS__MY-BOT__PERMISSIONS", "deny")
    monkeypatch.setenv("SESSIONS_MCP_AGENTS__MY-BOT__TIMEOUT_S", "9")
    bot = load_settings(None).agents["my-bot"]
    assert (bot.kind, bot.command, bot.permissions, bot.timeout_s) == ("command", "bot --go", "deny", 9)
