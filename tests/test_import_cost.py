"""Importing sessions-mcp loads only what the configuration uses (budget 1 of bench/README.md).

Each check runs a fresh interpreter and reads ``sys.modules``: which modules get imported, not
how long it takes (timing belongs to the benchmarks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Things a configuration may or may not use; the SDK's own imports are subtracted before checking.
OPTIONAL = (
    "sqlite3",
    "_sqlite3",
    "psycopg",
    "psycopg_pool",
    "httpx2",
    "httpx",
    "httpcore",
    "uvicorn",
    "jwt",
    "openai",
    "sessions_mcp.backends.local",
    "sessions_mcp.backends.factory",
    "sessions_mcp.backends.fabro",
    "sessions_mcp.store.sqlite",
    "sessions_mcp.store.postgres",
    "sessions_mcp.http_app",
    "sessions_mcp.mirror",
)


def loaded(code: str, tmp_path: Path, **env: str) -> set[str]:
    """The modules in ``sys.modules`` after running ``code`` in a clean interpreter."""
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        **env,
    }
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], env=full_env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def optional_in(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == o or m.startswith(o + ".") for o in OPTIONAL)}


@pytest.fixture(scope="module")
def sdk_modules(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """What ``import mcp.server.mcpserver`` alone loads (the bare SDK server)."""
    return loaded("import mcp.server.mcpserver", tmp_path_factory.mktemp("sdk"))


def test_package_import_loads_nothing_heavy(tmp_path: Path) -> None:
    baseline = loaded("", tmp_path)
    extra = loaded("import sessions_mcp", tmp_path) - baseline
    assert {m.split(".")[0] for m in extra} <= {"sessions_mcp", "__future__"}, sorted(extra)


def test_server_module_adds_no_backend_client_or_driver(tmp_path: Path, sdk_modules: set[str]) -> None:
    mods = loaded("import sessions_mcp.server", tmp_path)
    assert "mcp.server.mcpserver" in mods
    assert optional_in(mods - sdk_modules) == set()


def test_local_configuration_loads_only_the_local_backend(tmp_path: Path, sdk_modules: set[str]) -> None:
    code = "from sessions_mcp.server import build_server\nfrom sessions_mcp.settings import load_settings\n"
    code += "build_server(load_settings())"
    mods = loaded(code, tmp_path, SESSIONS_MCP_LOCAL__DB=str(tmp_path / "s.db"))
    used = optional_in(mods - sdk_modules)
    assert "sessions_mcp.backends.local" in used
    assert "sessions_mcp.store.sqlite" in used
    unused = {
        m
        for m in used
        if m.startswith(("sessions_mcp.backends.factory", "sessions_mcp.backends.fabro", "sessions_mcp.store.postgres"))
        or m.split(".")[0] in ("psycopg", "psycopg_pool", "openai", "uvicorn", "jwt")
        or m.startswith(("sessions_mcp.http_app", "sessions_mcp.mirror", "sessions_mcp.backends.local.agents"))
    }
    assert unused == set()


def test_factory_configuration_does_not_load_the_other_backends(tmp_path: Path, sdk_modules: set[str]) -> None:
    code = "from sessions_mcp.server import build_server\nfrom sessions_mcp.settings import load_settings\n"
    code += "build_server(load_settings())"
    mods = loaded(
        code,
        tmp_path,
        SESSIONS_MCP_BACKENDS="factory",
        FACTORY_API_KEY="fk-test",
        SESSIONS_MCP_LOCAL__DB=str(tmp_path / "s.db"),
    )
    used = optional_in(mods - sdk_modules)
    assert "sessions_mcp.backends.factory" in used
    assert not {m for m in used if m.startswith(("sessions_mcp.backends.fabro", "sessions_mcp.backends.local"))}
    assert not {m for m in used if m.split(".")[0] in ("psycopg", "psycopg_pool", "openai", "jwt")}
