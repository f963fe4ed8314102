"""Bounds on the free-text arguments every entry point takes, checked in one place.

A field without a bound let one caller make every later listing huge (a 1,000,000-character
``model`` on 40 sessions made ``list_sessions()`` 20 MB). Message text has its own bound
(``service.MAX_TEXT``); these are the short fields.
"""

from __future__ import annotations

from .errors import InvalidArgument, quote

TITLE = 500
MODEL = 200
AGENT = 64
BACKEND = 64
QUERY = 500
IDEMPOTENCY_KEY = 200
SYSTEM = 100_000
"""A system prompt may be long, but not unbounded."""


def check(value: str | None, name: str, limit: int) -> None:
    """Refuse ``value`` longer than ``limit`` characters, saying which argument and by how much."""
    if value is not None and len(value) > limit:
        raise InvalidArgument(
            f"{name} is {len(value):,} characters ({quote(value, 40)}); the limit is {limit:,}. Shorten it"
        )


def clip(value: str | None, limit: int) -> str | None:
    """``value`` cut to ``limit`` characters (with an ellipsis) for listings of older rows."""
    if value is None or len(value) <= limit:
        return value
    return value[: limit - 1] + "…"


__all__ = ["check", "clip"]
