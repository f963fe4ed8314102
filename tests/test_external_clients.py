"""Non-Python clients against the real server: the TypeScript SDK and the MCP Inspector CLI.

stdio: the client starts `python -m sessions_mcp` itself. HTTP and SSE: `sessions-mcp --transport http`
with a bearer token. These need the npm tools (scripts/setup-node-tools.sh); without them they FAIL.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import daemon_env, server_command
from .http_support import NodeTools, ServerProcess

pytestmark = [pytest.mark.node, pytest.mark.slow]

TOKEN = "ts-client-token-0123456789abcdef"


@pytest.fixture(scope="module")
def node() -> NodeTools:
    return NodeTools()


def _run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _check_ts_summary(r: subprocess.CompletedProcess[str], transport: str) -> dict[str, Any]:
    assert r.returncode == 0, f"ts client failed over {transport}:\n{r.stdout}\n{r.stderr}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["server"]["name"] == "sessions-mcp"
    assert {"create_session", "send_message", "list_messages", "get_session"} <= set(out["tools"])
    assert out["messages"] == [f"user: hello from ts over {transport}", "assistant: answered"]
    assert out["session_id"].startswith("local:")
    assert out["transcript_has_answer"] and out["prompt_has_task"]
    assert "session://{backend}/{native_id}/transcript" in out["templates"]
    assert out["unknown_is_error"] and "unknown session" in out["unknown_text"]
    return out


def test_typescript_sdk_over_stdio(node: NodeTools, tmp_path: Path) -> None:
    env = node.env(tmp_path, SESSIONS_MCP_LOCAL__DB=str(tmp_path / "s.db"))
    r = _run([str(node.node), str(node.ts_client()), "stdio", *server_command()], env)
    _check_ts_summary(r, "stdio")
    assert (tmp_path / "s.db").exists()


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_typescript_sdk_over_http_and_sse(node: NodeTools, tmp_path: Path, transport: str) -> None:
    with ServerProcess(tmp_path / "s.db", env={"SESSIONS_MCP_HTTP__TOKENS": f"ts={TOKEN}"}) as server:
        url = server.started()
        endpoint = f"{url}/mcp" if transport == "http" else f"{url}/sse"
        client = [str(node.node), str(node.ts_client()), transport, endpoint]
        out = _check_ts_summary(_run(client, node.env(tmp_path, MCP_TOKEN=TOKEN)), transport)
        if transport == "http":
            assert out["protocol"] == "2025-11-25"
        refused = _run(client, node.env(tmp_path, MCP_TOKEN="wrong-token-0123456789abcdef"))
        assert refused.returncode != 0 and ("401" in refused.stderr or "invalid_token" in refused.stderr)
        assert server.terminate() == 0
    assert TOKEN not in server.stderr


def _inspector(node: NodeTools, *args: str) -> list[str]:
    return [str(node.node), str(node.inspector), "--cli", *args]


def test_inspector_cli_over_stdio(node: NodeTools, tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    env = node.env(tmp_path)
    daemon = [x for k, v in daemon_env().items() for x in ("-e", f"{k}={v}")]  # this test's daemon dir
    stdio = ["-e", f"SESSIONS_MCP_LOCAL__DB={db}", *daemon, "--", *server_command()]
    r = _run(_inspector(node, "--method", "tools/list", "--format", "json", *stdio), env)
    assert r.returncode == 0, r.stderr
    names = {t["name"] for t in json.loads(r.stdout)["result"]["tools"]}
    assert {"create_session", "list_messages"} <= names
    args = json.dumps({"prompt": "from the inspector", "title": "insp"})
    r = _run(
        _inspector(node, "--method", "tools/call", "--tool-name", "create_session", "--tool-args-json", args,
                   "--format", "json", *stdio),
        env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    session = json.loads(r.stdout)["result"]["structuredContent"]["session"]
    r = _run(_inspector(node, "--method", "resources/read", "--uri", session["transcript_uri"], "--format", "json",
                        *stdio), env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "from the inspector" in json.loads(r.stdout)["result"]["contents"][0]["text"]
    r = _run(_inspector(node, "--method", "logging/setLevel", "--log-level", "debug", *stdio), env)
    assert r.returncode == 0, r.stderr
    r = _run(_inspector(node, "--method", "tools/call", "--tool-name", "get_session", "--tool-args-json",
                        json.dumps({"session_id": "local:nope"}), *stdio), env)  # fmt: skip
    assert r.returncode == 5 and "isError" in r.stderr  # a tool error, reported as such


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_inspector_cli_over_http_and_sse(node: NodeTools, tmp_path: Path, transport: str) -> None:
    env = node.env(tmp_path)
    with ServerProcess(tmp_path / "s.db", env={"SESSIONS_MCP_HTTP__TOKENS": f"insp={TOKEN}"}) as server:
        url = server.started()
        target = [f"{url}/mcp", "--transport", "http"] if transport == "http" else [f"{url}/sse", "--transport", "sse"]
        auth = ["--header", f"Authorization: Bearer {TOKEN}"]
        args = json.dumps({"prompt": f"inspector via {transport}"})
        r = _run(_inspector(node, *target, *auth, "--method", "tools/call", "--tool-name", "create_session",
                            "--tool-args-json", args, "--format", "json"), env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        sid = json.loads(r.stdout)["result"]["structuredContent"]["session"]["id"]
        eras = ["legacy", "modern"] if transport == "http" else ["legacy"]
        for era in eras:
            r = _run(_inspector(node, *target, *auth, "--protocol-era", era, "--method", "tools/call", "--tool-name",
                                "list_sessions", "--format", "json"), env)  # fmt: skip
            assert r.returncode == 0, (era, r.stderr)
            assert sid in {s["id"] for s in json.loads(r.stdout)["result"]["structuredContent"]["sessions"]}
        r = _run(_inspector(node, *target, "--method", "tools/list"), env)  # no token
        assert r.returncode != 0
        assert server.terminate() == 0
