"""What ``sessions-mcp doctor`` reports: one :class:`Check` per thing that can be wrong."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's table."""

    component: str
    """What was checked, e.g. ``"local store"`` or ``"factory: API key"``."""
    level: Level
    detail: str
    """What was found, in plain words (never a secret)."""
    fix: str = ""
    """What to do about it when it is not fine (names the setting or flag)."""
