"""Tool-argument errors in our words.

The SDK reports arguments that fail the input schema with pydantic's own text ("1 validation
error for send_messageArguments … For further information visit https://errors.pydantic.dev…"),
the whole bad input included. :func:`explain` says the same thing the way every other error of
this server does: which argument, what is allowed, a short quote of what was sent.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ValidationError

from .errors import quote

_TYPES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
}


def _shown(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return quote(value, 60)
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _one(error: Any) -> tuple[str, str]:
    loc = [str(p) for p in error.get("loc", ()) if not str(p).startswith(("str-enum", "list[", "function-"))]
    name = ".".join(loc) or "arguments"
    return name, _sentence(name, error)


def _sentence(name: str, error: Any) -> str:
    kind: str = error.get("type", "")
    ctx: dict[str, Any] = error.get("ctx") or {}
    got = error.get("input")
    if kind == "missing":
        return f"{name} is required"
    if kind == "extra_forbidden":
        return f"{name} is not an argument of this tool"
    if kind in ("literal_error", "enum"):
        return f"{name} must be one of {ctx.get('expected', 'the listed values')} (got {_shown(got)})"
    if kind == "finite_number":
        return f"{name} must be a finite number (got {_shown(got)})"
    if kind in ("string_too_long", "too_long"):
        return f"{name} is longer than {ctx.get('max_length')} (got {_shown(got)})"
    if kind in ("string_too_short", "too_short"):
        return f"{name} is too short (at least {ctx.get('min_length')})"
    bounds = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"{name} must be {bounds[kind]} {limit} (got {_shown(got)})"
    if kind in _TYPES:
        return f"{name} must be {_TYPES[kind]} (got {_shown(got)})"
    message = str(error.get("msg", "is invalid"))
    return f"{name}: {message[:200]}"


def explain(tool: str, exc: ValidationError) -> str:
    """One readable sentence per bad argument, with what to do."""
    by_name: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        name, sentence = _one(error)
        by_name.setdefault(name, sentence)  # a union (one status or a list) fails once per member
    listed = "; ".join(list(by_name.values())[:5])
    del tool  # the SDK's prefix already names it
    return f"invalid arguments: {listed}. Fix them and call again (see the tool's input schema)"


def install(tools: list[Any]) -> None:
    """Make each tool report argument errors with :func:`explain` instead of pydantic's text."""
    for tool in tools:
        original: Callable[..., Awaitable[Any]] = tool.run

        def make(original: Callable[..., Awaitable[Any]], name: str) -> Callable[..., Awaitable[Any]]:
            async def run(arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
                try:
                    return await original(arguments, context, convert_result=convert_result)
                except ToolError as exc:
                    cause = exc.__cause__
                    if isinstance(cause, ValidationError):
                        raise ToolError(f"Error executing tool {name}: {explain(name, cause)}") from None
                    raise

            return run

        object.__setattr__(tool, "run", make(original, tool.name))


__all__ = ["explain", "install"]
