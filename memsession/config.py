"""SessionCache options: one frozen dataclass, checked once at construction.

Integrations translate framework settings into a ``Config`` once; library code
never reads globals or environment variables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

__all__ = ["Config"]


def _positive(option: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(option, value, "must be a number" + (" or None" if allow_none else ""))
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(option, value, "must be a finite number > 0" if not allow_zero else "must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Every option of a SessionCache, with its default.

    Times are seconds. ``idle_timeout`` slides with every access,
    ``max_age`` counts from creation and is never extended; ``None`` turns
    either off. ``maxsize`` bounds how many sessions one process holds in
    memory (least recently used go first).
    """

    #: Most sessions held in memory by one process; LRU beyond that.
    maxsize: int = 100_000
    #: A session unused this long expires (sliding).
    idle_timeout: float | None = 30 * 60.0
    #: A session expires this long after it was created, however active (absolute).
    max_age: float | None = 12 * 3600.0
    #: Accesses are propagated at most once per this interval per session.
    touch_interval: float = 60.0
    #: How long a destroyed id stays dead; must outlive any in-flight request.
    tombstone_ttl: float = 600.0
    #: Largest serialized session (msgpack bytes) accepted by ``set``.
    max_session_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if isinstance(self.maxsize, bool) or not isinstance(self.maxsize, int) or self.maxsize < 1:
            raise ConfigError("maxsize", self.maxsize, "must be an int >= 1")
        _positive("idle_timeout", self.idle_timeout, allow_none=True)
        _positive("max_age", self.max_age, allow_none=True)
        _positive("touch_interval", self.touch_interval, allow_zero=True)
        _positive("tombstone_ttl", self.tombstone_ttl)
        mb = self.max_session_bytes
        if isinstance(mb, bool) or not isinstance(mb, int) or mb < 64:
            raise ConfigError("max_session_bytes", mb, "must be an int >= 64")

    @classmethod
    def from_options(cls, config: Config | None = None, **options: Any) -> Config:
        """``config`` with ``options`` overriding it; unknown names are a ConfigError."""
        known = {f.name for f in fields(cls)}
        for name, value in options.items():
            if name not in known:
                raise ConfigError(name, value, f"unknown option; known: {', '.join(sorted(known))}")
        if config is None:
            return cls(**options)
        base = {f.name: getattr(config, f.name) for f in fields(cls)}
        base.update(options)
        return cls(**base)
