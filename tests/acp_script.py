"""Mock-model scripts for the ACP agent tests: the same scenario for every preset.

Triggers (the latest user text that contains one picks the script, see tests/mockllm.py):

- ``WRITE <file>``: the model calls the agent's shell tool once with ``echo hi > <file>``, then says
  ``WROTE-DONE`` (with what the tool reported);
- ``REMEMBER``: plain text ``NOTED``;
- ``RECALL``: says ``RECALLED kiwi-42`` when the request carries the earlier ``kiwi-42`` message
  (the agent kept its conversation), else ``FORGOT``;
- ``SLOW``: answers after 60 s (the turn is interrupted long before);
- ``WRITE live.txt``: the shell call, then the final answer only after 60 s (parts show up meanwhile).
"""

from __future__ import annotations

import re
from typing import Any

from .mockllm import Call, Say, Tool, Turn

SHELL_TOOLS = ["run_shell_command", "Bash", "bash", "shell", "exec_command", "Execute", "shell_command"]
SECRET = "kiwi-42"


def shell_args(command: str) -> Any:
    """Arguments for whichever shell tool the agent offers, built from its JSON schema."""

    def build(turn: Turn, tool: Tool | None) -> dict[str, Any]:
        schema = (tool.schema if tool else {}) or {}
        props: dict[str, Any] = schema.get("properties") or {}
        args: dict[str, Any] = {}
        for name, prop in props.items():
            kind = prop.get("type") if isinstance(prop, dict) else None
            if name in ("command", "cmd"):
                args[name] = ["bash", "-lc", command] if kind == "array" else command
            elif name in ("description", "justification", "summary"):
                args[name] = "write a file for the test"
            elif name == "sandbox_permissions":
                args[name] = "require_escalated"
            elif name in ("riskLevel", "risk_level"):
                args[name] = "low"
            elif name in ("riskLevelReason",):
                args[name] = "writes one small file"
        if not any(k in args for k in ("command", "cmd")):
            args["command"] = command
        return args

    return build


def _recall(turn: Turn) -> str:
    if SECRET not in turn.body_text:
        return "FORGOT"
    if "context was lost" in turn.body_text:
        return f"RETOLD {SECRET}"  # sessions-mcp had to give the history to a new conversation
    return f"RECALLED {SECRET}"


def _written(turn: Turn) -> str:
    last = turn.last_result
    return f"WROTE-DONE ({(last.text if last else 'no result')[:200]})"


def scenario() -> dict[str, list[Any]]:
    """The script every ACP preset test runs against."""
    script: dict[str, list[Any]] = {
        "RECALL": [Say(_recall)],
        "REMEMBER": [Say("NOTED")],
        "SLOW": [Say("too late", delay_s=60)],
    }
    script["WRITE live.txt"] = [Call(SHELL_TOOLS, shell_args("echo hi > live.txt")), Say("late", delay_s=60)]
    for name in ("allowed.txt", "refused.txt", "policy.txt"):
        script[f"WRITE {name}"] = [Call(SHELL_TOOLS, shell_args(f"echo hi > {name}")), Say(_written)]
    return script


def mentions(text: str, word: str) -> bool:
    """Whether ``word`` appears in ``text`` as a whole word."""
    return re.search(rf"\b{re.escape(word)}\b", text) is not None
