"""``sessions-mcp setup``: the README snippets are its output; it merges, never clobbers; doctor sees hosts."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from sessions_mcp import hosts
from sessions_mcp.cli import main
from sessions_mcp.hosts import HOSTS, LOCAL_PLACEHOLDER, Launch

from .test_docs import snippets

README_URL = "http://127.0.0.1:8765/mcp"
FILE_HOSTS = ["codex", "gemini", "qwen", "copilot", "droid"]
ADD_HOSTS = ["claude-code", "codex", "gemini", "qwen", "copilot", "droid"]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for key in ("CODEX_HOME", "CLAUDE_CONFIG_DIR"):
        monkeypatch.delenv(key, raising=False)
    return home


def setup(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["setup", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("host", FILE_HOSTS)
def test_readme_file_snippets_are_what_setup_prints(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    found = snippets()
    assert setup(capsys, host, "--print", "--uvx")[1].strip() == found[host][1]
    assert setup(capsys, host, "--print", "--command", LOCAL_PLACEHOLDER)[1].strip() == found[f"{host}-local"][1]


@pytest.mark.parametrize("host", ADD_HOSTS)
def test_readme_add_commands_are_the_hosts_own(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    found = snippets()
    add = HOSTS[host].add
    assert add is not None
    http = Launch(url=README_URL, token_env="SESSIONS_MCP_TOKEN")
    if host == "claude-code":
        assert found["claude-code"][1] == add(Launch(), "sessions")
        assert found["claude-code-local"][1] == add(Launch(command=LOCAL_PLACEHOLDER, args=()), "sessions")
    else:
        assert found[f"{host}-add"][1] == add(Launch(), "sessions")
    if host == "codex":  # its add command cannot pre-approve tools: the README gives the file form
        printed = setup(capsys, "codex", "--print", "--url", README_URL, "--token-env", "SESSIONS_MCP_TOKEN")[1]
        assert found["codex-http"][1] == printed.strip()
    else:
        assert found[f"{host}-http"][1] == add(http, "sessions")


def test_setup_merges_into_a_file_and_keeps_everything_else(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = home / ".gemini" / "settings.json"
    path.parent.mkdir()
    before = {"security": {"auth": {"selectedType": "gemini-api-key"}}, "mcpServers": {"other": {"command": "x"}}}
    path.write_text(json.dumps(before))
    path.chmod(0o600)
    code, _, err = setup(capsys, "gemini", "--command", "/opt/sm/bin/sessions-mcp")
    assert code == 0 and "added server 'sessions'" in err and str(path) in err
    data = json.loads(path.read_text())
    assert data["security"] == before["security"] and data["mcpServers"]["other"] == {"command": "x"}
    assert data["mcpServers"]["sessions"] == {"command": "/opt/sm/bin/sessions-mcp", "args": [], "trust": True}
    assert path.stat().st_mode & 0o777 == 0o600
    code, _, err = setup(capsys, "gemini", "--command", "/opt/sm/bin/sessions-mcp", "-e", "SESSIONS_MCP_BACKENDS=local")
    assert code == 0 and "updated" in err
    data = json.loads(path.read_text())
    assert data["mcpServers"]["sessions"]["env"] == {"SESSIONS_MCP_BACKENDS": "local"}
    assert list(data["mcpServers"]) == ["other", "sessions"]
    assert [n for n, _ in hosts.configured(HOSTS["gemini"])] == ["sessions"]


def test_setup_never_replaces_another_servers_entry(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = home / ".claude.json"
    original = json.dumps({"mcpServers": {"sessions": {"type": "stdio", "command": "node", "args": ["notes.js"]}}})
    path.write_text(original)
    code = main(["setup", "claude-code"])
    assert code == 2 and "--name" in capsys.readouterr().err
    assert path.read_text() == original
    assert setup(capsys, "claude-code", "--name", "agent-sessions", "--command", "/x/sessions-mcp")[0] == 0
    servers = json.loads(path.read_text())["mcpServers"]
    assert servers["sessions"]["args"] == ["notes.js"] and servers["agent-sessions"]["command"] == "/x/sessions-mcp"


def test_setup_refuses_a_file_it_cannot_read(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = home / ".factory" / "mcp.json"
    path.parent.mkdir()
    path.write_text('{"mcpServers": {')
    assert main(["setup", "droid"]) == 2
    assert "not valid JSON" in capsys.readouterr().err and path.read_text() == '{"mcpServers": {'


def test_codex_toml_update_replaces_only_its_own_tables(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = home / ".codex" / "config.toml"
    path.parent.mkdir()
    path.write_text('# my settings\nmodel = "o9"\n\n[mcp_servers.other]\ncommand = "other"\n')
    assert setup(capsys, "codex", "--command", "/a/sessions-mcp", "-e", "SESSIONS_MCP_LOCAL__DB=/tmp/x.db")[0] == 0
    assert setup(capsys, "codex", "--command", "/b/sessions-mcp")[0] == 0
    text = path.read_text()
    assert text.startswith('# my settings\nmodel = "o9"\n\n[mcp_servers.other]\ncommand = "other"\n')
    assert text.count("[mcp_servers.sessions]") == 1 and "SESSIONS_MCP_LOCAL__DB" not in text
    data = tomllib.loads(text)
    assert data["mcp_servers"]["other"] == {"command": "other"}
    assert data["mcp_servers"]["sessions"]["command"] == "/b/sessions-mcp"
    assert data["mcp_servers"]["sessions"]["default_tools_approval_mode"] == "approve"


def test_print_writes_nothing_and_unknown_hosts_are_named(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = setup(capsys, "cursor", "--print", "--url", README_URL, "--token-env", "TOKEN_VAR")
    assert code == 0 and json.loads(out) == {
        "mcpServers": {"sessions": {"url": README_URL, "headers": {"Authorization": "Bearer ${env:TOKEN_VAR}"}}}
    }
    assert not any(home.iterdir())
    with pytest.raises(SystemExit):
        main(["setup", "notepad"])
    assert "claude-code" in capsys.readouterr().err
    assert main(["setup", "claude-desktop", "--url", README_URL]) == 2
    assert "Connectors" in capsys.readouterr().err


def test_doctor_reports_the_configured_hosts(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [check] = hosts.host_checks()
    assert check.component == "hosts" and "no MCP host" in check.detail
    assert setup(capsys, "copilot", "--command", str(home / "gone" / "sessions-mcp"))[0] == 0
    assert setup(capsys, "codex", "--uvx")[0] == 0
    summary, gone = hosts.host_checks()
    assert "GitHub Copilot CLI" in summary.detail and "Codex" in summary.detail and "Gemini" not in summary.detail
    assert gone.level == "warn" and "which is gone" in gone.detail and "setup copilot" in (gone.fix or "")
    main(["doctor"])
    assert "GitHub Copilot CLI" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("host", "relative", "key", "extra"),
    [
        ("vscode", "xdg-config/Code/User/mcp.json", "servers", {"type": "stdio"}),
        ("cursor", "home/.cursor/mcp.json", "mcpServers", {}),
        ("windsurf", "home/.codeium/windsurf/mcp_config.json", "mcpServers", {}),
        ("claude-desktop", "xdg-config/Claude/claude_desktop_config.json", "mcpServers", {}),
    ],
)
def test_editors_and_desktop_apps_get_their_own_shape(
    host: str, relative: str, key: str, extra: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "bin" / "sessions-mcp"
    binary.parent.mkdir()
    binary.touch()
    assert setup(capsys, host, "--command", str(binary))[0] == 0
    data = json.loads((tmp_path / relative).read_text())  # conftest points XDG_CONFIG_HOME at tmp_path
    assert data == {key: {"sessions": extra | {"command": str(binary), "args": []}}}
    [summary] = hosts.host_checks()
    assert HOSTS[host].label in summary.detail
