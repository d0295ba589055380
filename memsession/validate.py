"""The one set of option checks every config class uses.

Each check raises ``ConfigError`` naming the option, the value and what is
allowed, so a bad option fails at construction with the same words whichever
class it belongs to (``SessionCache``, bus, hub, persistence, sidecar, web).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from .errors import ConfigError

__all__ = ["check_choice", "check_fraction", "check_int", "check_number"]


def check_number(option: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    """A finite number > 0 (``>= 0`` with ``allow_zero``; ``None`` too with ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(option, value, "must be a number" + (" or None" if allow_none else ""))
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(option, value, "must be a finite number >= 0" if allow_zero else "must be a finite number > 0")


def check_fraction(option: str, value: Any) -> None:
    """A finite number in ``[0, 1)``: a share of a bound that always leaves some of it over."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(option, value, "must be a number")
    if not math.isfinite(value) or not 0 <= value < 1:
        raise ConfigError(option, value, "must be a finite number >= 0 and < 1")


def check_int(option: str, value: Any, *, minimum: int = 1) -> None:
    """An ``int`` (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(option, value, f"must be an int >= {minimum}")


def check_choice(option: str, value: Any, choices: Collection[Any]) -> None:
    """One of ``choices``."""
    if value not in choices:
        raise ConfigError(option, value, "must be one of " + ", ".join(repr(c) for c in choices))
