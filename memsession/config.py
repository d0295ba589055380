"""SessionCache options: one frozen dataclass, checked once at construction.

Integrations translate framework settings into a ``Config`` once; library code
never reads globals or environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError
from .segmented import DEFAULT_PROTECTED_FRACTION
from .validate import check_fraction, check_int, check_number

__all__ = ["Config"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Every option of a SessionCache, with its default.

    Times are seconds. ``idle_timeout`` slides with every access,
    ``max_age`` counts from creation and is never extended; ``None`` turns
    either off. ``maxsize`` bounds how many sessions one process holds in
    memory; past it, sessions used only once go first (``protected_fraction``).
    """

    #: Most sessions held in memory by one process; beyond that the least recently used
    #: session used only once is evicted (see ``protected_fraction``).
    maxsize: int = 100_000
    #: Share of ``maxsize`` kept for sessions used more than once (read, touched or written
    #: again, here or on another worker). A new session starts outside it and is evicted
    #: first, so a flood of new sessions can't push returning users out; past the share, the
    #: least recently used of those goes back to the new ones. ``0`` is plain LRU. ``[0, 1)``.
    protected_fraction: float = DEFAULT_PROTECTED_FRACTION
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
    #: Most values (at every depth) in one session's data: bounds the memory a session costs
    #: (``memsession.admission``), which ``max_session_bytes`` alone does not.
    max_session_items: int = 8192
    #: Seconds a record from elsewhere may be ahead of this clock (its version, created, accessed):
    #: the clock drift allowed between hosts; a record further ahead is refused.
    max_skew: float = 60.0
    #: How long a read waits for the hub (or store) to say whether a session it was shown
    #: exists, when they are away (a sidecar restart); past it ``SessionUnavailable``.
    outage_budget: float = 5.0

    def __post_init__(self) -> None:
        check_int("maxsize", self.maxsize)
        check_fraction("protected_fraction", self.protected_fraction)
        check_number("idle_timeout", self.idle_timeout, allow_none=True)
        check_number("max_age", self.max_age, allow_none=True)
        check_number("touch_interval", self.touch_interval, allow_zero=True)
        check_number("tombstone_ttl", self.tombstone_ttl)
        check_int("max_session_bytes", self.max_session_bytes, minimum=64)
        check_int("max_session_items", self.max_session_items)
        check_number("max_skew", self.max_skew)
        check_number("outage_budget", self.outage_budget, allow_zero=True)

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
