"""Run a real coding-agent CLI (installed by scripts/setup-clis.sh) in a fresh HOME against the mock model.

The API, for the host tests and the ACP agent tests::

    mock = MockLLM(script).start()
    home = CliHome.create("claude", tmp_path / "home", mock.url)   # config files + environment
    home.write_json(".claude.json", {...}, merge=True)              # add more config, merged
    done = home.run(["claude", "-p", "go"])                         # stdin /dev/null, own process group
    assert done.returncode == 0, done.output
    assert not home.leftover_pids()                                 # nothing runs with this HOME

- :func:`cli_bin` is the path of an installed executable (claude, codex, gemini, qwen, copilot,
  droid, opencode, claude-agent-acp, codex-acp); it fails with what to run when it is missing.
- :meth:`CliHome.create` writes the per-CLI settings measured in REAL-AGENTS.md: model endpoint
  at the mock, no telemetry, no auto-update, no trust/onboarding prompts, and returns the
  environment (``home.env``) to run the CLI with. The work directory is ``home.work``.
- :meth:`CliHome.popen` starts a long-lived CLI (an ACP agent) in its own process group;
  :func:`stop_group` ends it by that group's id.
- :meth:`CliHome.leftover_pids` lists processes still running with this HOME in their
  environment (the CLI's children, e.g. an MCP server), found by scanning /proc.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLIS_DIR = Path(os.environ.get("SESSIONS_MCP_CLIS_DIR") or ROOT / ".tools" / "clis").resolve()
BIN_DIR = CLIS_DIR / "node_modules" / ".bin"
CACHE_DIR = CLIS_DIR / "cache"  # shared unpack cache (Copilot unpacks ~235 MB on first run)
MOCK_KEY = "mock-key"
MODEL = "mock-model"
GEMINI_MODEL = "gemini-2.5-flash"


def cli_bin(name: str) -> str:
    """Absolute path of an installed CLI executable."""
    path = BIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run 'bash scripts/setup-clis.sh' (SESSIONS_MCP_CLIS_DIR={CLIS_DIR})"
        )
    return str(path)


def deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``extra``, merging nested dicts instead of replacing them."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)  # pyright: ignore[reportUnknownArgumentType]
        else:
            out[key] = value
    return out


@dataclass
class Done:
    """A finished CLI run."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    pid: int
    seconds: float
    timed_out: bool = False

    @property
    def output(self) -> str:
        """Both streams, for assertion messages."""
        return f"$ {' '.join(self.argv)}\nexit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


@dataclass
class CliHome:
    """A fresh HOME configured for one CLI talking to the mock at ``mock_url``."""

    cli: str
    home: Path
    mock_url: str
    env: dict[str, str] = field(default_factory=dict[str, str])

    @property
    def work(self) -> Path:
        return self.home / "work"

    @classmethod
    def create(cls, cli: str, home: Path, mock_url: str, extra_env: Mapping[str, str] | None = None) -> CliHome:
        """Make ``home`` (and ``home/work``), write ``cli``'s base configuration, build its environment."""
        self = cls(cli, home.resolve(), mock_url.rstrip("/"))
        self.work.mkdir(parents=True, exist_ok=True)
        (self.home / "tmp").mkdir(exist_ok=True)
        self.env = {
            "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.home),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "TERM": "dumb",
            "NO_COLOR": "1",
            "TMPDIR": str(self.home / "tmp"),
            "USER": os.environ.get("USER", "root"),
        }
        getattr(self, f"_setup_{cli.replace('-', '_')}")()
        self.env.update(extra_env or {})
        return self

    # --- per-CLI base configuration (REAL-AGENTS.md) ---

    def _setup_claude(self) -> None:
        self.env |= {
            "ANTHROPIC_BASE_URL": self.mock_url,
            "ANTHROPIC_API_KEY": "sk-ant-" + MOCK_KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "DISABLE_ERROR_REPORTING": "1",
            "CLAUDE_CODE_TMPDIR": str(self.home / "tmp"),
        }

    _setup_claude_agent_acp = _setup_claude

    def _setup_codex(self) -> None:
        codex_home = self.home / ".codex"
        codex_home.mkdir(exist_ok=True)
        (codex_home / "config.toml").write_text(
            f'model = "{MODEL}"\nmodel_provider = "mock"\napproval_policy = "never"\nsandbox_mode = "read-only"\n'
            "check_for_update_on_startup = false\n\n"
            f'[model_providers.mock]\nname = "Mock"\nbase_url = "{self.mock_url}/v1"\nenv_key = "MOCK_API_KEY"\n'
            'wire_api = "responses"\nrequest_max_retries = 0\nstream_max_retries = 0\n\n'
            "[features]\nplugins = false\n\n[analytics]\nenabled = false\n\n[feedback]\nenabled = false\n"
        )
        self.env |= {"CODEX_HOME": str(codex_home), "MOCK_API_KEY": MOCK_KEY}

    _setup_codex_acp = _setup_codex

    def _setup_gemini(self) -> None:
        self.write_json(".gemini/settings.json", {
            "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
            "privacy": {"usageStatisticsEnabled": False},
            "telemetry": {"enabled": False},
            "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
        })  # fmt: skip
        self.env |= {
            "GEMINI_API_KEY": MOCK_KEY,
            "GOOGLE_GEMINI_BASE_URL": self.mock_url,
            "GEMINI_CLI_NO_RELAUNCH": "true",
        }

    def _setup_qwen(self) -> None:
        self.write_json(".qwen/settings.json", {
            "privacy": {"usageStatisticsEnabled": False},
            "telemetry": {"enabled": False},
            "general": {"enableAutoUpdate": False, "disableAutoUpdate": True},
        })  # fmt: skip
        self.env |= {"OPENAI_API_KEY": MOCK_KEY, "OPENAI_BASE_URL": f"{self.mock_url}/v1", "OPENAI_MODEL": MODEL}

    def _setup_copilot(self) -> None:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        self.env |= {
            "COPILOT_OFFLINE": "true",
            "COPILOT_AUTO_UPDATE": "false",
            "COPILOT_PROVIDER_BASE_URL": f"{self.mock_url}/v1",
            "COPILOT_PROVIDER_TYPE": "openai",
            "COPILOT_PROVIDER_API_KEY": MOCK_KEY,
            "COPILOT_MODEL": MODEL,
            "XDG_CACHE_HOME": str(CACHE_DIR),
        }

    def _setup_droid(self) -> None:
        self.write_json(".factory/settings.json", {
            "customModels": [{"model": MODEL, "displayName": "Mock", "baseUrl": f"{self.mock_url}/v1",
                              "apiKey": MOCK_KEY, "provider": "generic-chat-completion-api", "maxOutputTokens": 4096}],
            "cloudSessionSync": False,
            "blockOnMcpLoad": True,
        })  # fmt: skip
        closed = "http://127.0.0.1:9"  # a closed loopback port: phone-home calls fail at once
        self.env |= {
            "FACTORY_API_BASE_URL": closed,
            "FACTORY_TELEMETRY_INGEST_BASE_URL": closed,
            "OTEL_PRODUCT_ENDPOINT": closed,
        }

    def _setup_opencode(self) -> None:
        self.write_json(".config/opencode/opencode.json", {
            "$schema": "https://opencode.ai/config.json",
            "provider": {"mock": {"npm": "@ai-sdk/openai-compatible", "name": "Mock",
                                  "options": {"baseURL": f"{self.mock_url}/v1", "apiKey": MOCK_KEY},
                                  "models": {MODEL: {"name": "Mock"}}}},
            "model": f"mock/{MODEL}",
            "small_model": f"mock/{MODEL}",
            "autoupdate": False,
            "share": "disabled",
        })  # fmt: skip
        h = self.home
        self.env |= {
            "XDG_CONFIG_HOME": str(h / ".config"),
            "XDG_DATA_HOME": str(h / ".local/share"),
            "XDG_CACHE_HOME": str(h / ".cache"),
            "XDG_STATE_HOME": str(h / ".local/state"),
            "OPENCODE_DISABLE_MODELS_FETCH": "true",
            "OPENCODE_DISABLE_AUTOUPDATE": "true",
            "OPENCODE_DISABLE_LSP_DOWNLOAD": "true",
            "OPENCODE_DISABLE_SHARE": "true",
            "OPENCODE_DISABLE_DEFAULT_PLUGINS": "true",
            "OPENCODE_DISABLE_CLAUDE_CODE": "true",
        }

    # --- files ---

    def write_json(self, relative: str, data: Mapping[str, Any], *, merge: bool = True) -> Path:
        """Write ``data`` to ``HOME/relative``, deep-merged into what is there unless ``merge=False``."""
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        current: dict[str, Any] = json.loads(path.read_text()) if merge and path.exists() else {}
        path.write_text(json.dumps(deep_merge(current, data), indent=2) + "\n")
        return path

    def append_text(self, relative: str, text: str) -> Path:
        """Append ``text`` to ``HOME/relative`` (e.g. a TOML table to Codex's config.toml)."""
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write("\n" + text.rstrip("\n") + "\n")
        return path

    # --- processes ---

    def _argv(self, argv: Sequence[str]) -> list[str]:
        return [cli_bin(argv[0]) if "/" not in argv[0] and (BIN_DIR / argv[0]).exists() else argv[0], *argv[1:]]

    def run(self, argv: Sequence[str], *, timeout: float = 120, cwd: Path | None = None) -> Done:
        """Run ``argv`` (a bare CLI name is looked up in the install) to completion, stdin /dev/null.

        On timeout the whole process group is killed and ``Done.timed_out`` is set.
        """
        argv = self._argv(argv)
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, cwd=cwd or self.work, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            stop_group(proc)
            out, err = proc.communicate()
        return Done(argv, proc.returncode, out, err, proc.pid, time.monotonic() - started, timed_out)

    def popen(self, argv: Sequence[str], *, cwd: Path | None = None, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own process group with pipes for stdin/stdout (stderr to HOME/stderr.log)."""
        log = (self.home / "stderr.log").open("ab")
        return subprocess.Popen(
            self._argv(argv), cwd=cwd or self.work, env=self.env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log, start_new_session=True, **kwargs,
        )  # fmt: skip

    def leftover_pids(self, wait_s: float = 5.0) -> list[int]:
        """PIDs still running with this HOME in their environment, after waiting up to ``wait_s`` for them to go."""
        deadline = time.monotonic() + wait_s
        while True:
            pids = pids_with_env("HOME", str(self.home))
            if not pids or time.monotonic() >= deadline:
                return pids
            time.sleep(0.1)


def pids_with_env(key: str, value: str) -> list[int]:
    """Live (non-zombie) processes whose environment has ``key=value`` (Linux /proc)."""
    needle = f"{key}={value}".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def stop_group(proc: subprocess.Popen[Any], grace_s: float = 3.0) -> None:
    """SIGTERM ``proc``'s process group (it was started with start_new_session), SIGKILL after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
