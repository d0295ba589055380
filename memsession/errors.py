"""The one exception tree of memsession.

Every error the library raises on purpose is a ``MemsessionError``; errors from
psycopg, httpx, pyzmq and the operating system are translated into it at the
boundary where they happen (``raise ... from exc``) so callers catch one tree::

    MemsessionError
    ├── ConfigError(ValueError)            bad option at construction, .option .value
    │                                      or private sessions in one of several workers
    ├── SessionError
    │   ├── InvalidSessionId(ValueError)   malformed id                .sid
    │   ├── SessionDataError(TypeError)    value not JSON-like         .path .value
    │   ├── SessionTooLarge(ValueError)    serialized data over limit  .size .limit
    │   ├── SessionDestroyed               id is tombstoned            .sid
    │   └── SessionUnavailable             can't tell it now (outage)  .sid .retry_after
    ├── CacheClosed                        used after close()
    ├── RecordRefused(ValueError)          a record from elsewhere     .reason
    │                                      breaks the record rule (admission)
    ├── SignatureError(ValueError)         cookie signature/format bad .reason
    ├── WireError(ValueError)              bad bus frame               .reason
    ├── BusError                           transport failure           .endpoint
    └── StoreError                         persistence failure         .store .op
        ├── StoreUnavailable               server down/unreachable
        ├── StoreCorrupt                   unreadable data on disk     .path .reason
        ├── StoreRejected                  the store refuses records   .keys
        └── StoreClosed                    used after close()

Errors that double as built-in types (``ValueError``, ``TypeError``) do so
because callers reasonably catch those for bad input.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BusError",
    "CacheClosed",
    "ConfigError",
    "InvalidSessionId",
    "MemsessionError",
    "RecordRefused",
    "SessionDataError",
    "SessionDestroyed",
    "SessionUnavailable",
    "SessionError",
    "SessionTooLarge",
    "SignatureError",
    "StoreClosed",
    "StoreCorrupt",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "WireError",
]


class MemsessionError(Exception):
    """Root of every error memsession raises on purpose."""


class ConfigError(MemsessionError, ValueError):
    """An option has an invalid value; raised at construction, never at first use.

    One exception: a web integration whose cache keeps private sessions while
    other worker processes serve the same app raises it on its first request
    (and every one after), the first moment the server is known
    (``memsession.contrib.workers``).
    """

    def __init__(self, option: str, value: Any, reason: str) -> None:
        super().__init__(f"{option}={value!r}: {reason}")
        self.option = option
        self.value = value
        self.reason = reason


class SessionError(MemsessionError):
    """A session operation was refused."""


class InvalidSessionId(SessionError, ValueError):
    """The session id is not one memsession could have issued."""

    def __init__(self, sid: object) -> None:
        shown = sid[:16] + "..." if isinstance(sid, str) and len(sid) > 16 else sid
        super().__init__(f"malformed session id {shown!r}")
        self.sid = sid


class SessionDataError(SessionError, TypeError):
    """Session data holds a value that is not JSON-like, or breaks a bound (depth, values); ``path`` locates it."""

    def __init__(self, path: str, value: Any, reason: str) -> None:
        super().__init__(f"session data at {path}: {reason} (got {type(value).__name__})")
        self.path = path
        self.value = value
        self.reason = reason


class SessionTooLarge(SessionError, ValueError):
    """Serialized session data exceeds ``max_session_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"session data is {size} bytes serialized; the limit is {limit}")
        self.size = size
        self.limit = limit


class SessionDestroyed(SessionError):
    """The session was destroyed; its id can't be written again while its tombstone lives."""

    def __init__(self, sid: str) -> None:
        super().__init__("session was destroyed; issue a new id")
        self.sid = sid


class SessionUnavailable(SessionError):
    """Neither the hub nor a store could say within ``outage_budget`` whether the session exists.

    A worker never takes "no answer" for "no such session": that would log
    the user out. Web integrations answer 503 with ``Retry-After``.
    """

    def __init__(self, sid: str, waited: float, retry_after: int = 1) -> None:
        super().__init__(f"no hub or store answered for a session within {waited:.1f}s; try again")
        self.sid = sid
        self.waited = waited
        self.retry_after = retry_after


class CacheClosed(MemsessionError):
    """The SessionCache was used after ``close()``."""


class RecordRefused(MemsessionError, ValueError):
    """A record that came from elsewhere (bus, hub, store, file) breaks the record rule (``admission``).

    Doors skip and count it; it leaves the library only from calls that check one record on
    purpose. ``reason`` never quotes the session id.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SignatureError(MemsessionError, ValueError):
    """A signed value (cookie) failed verification."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WireError(MemsessionError, ValueError):
    """A bus frame is malformed, truncated, oversized or of another version."""

    def __init__(self, reason: str, kind: str = "malformed") -> None:
        super().__init__(reason)
        self.reason = reason
        #: What the receiver counts it as: ``"malformed"``, or ``"other version"`` for a frame of
        #: another protocol version (a process of another memsession release).
        self.kind = kind


class BusError(MemsessionError):
    """The message bus could not be set up or used."""

    def __init__(self, message: str, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class StoreError(MemsessionError):
    """A persistence store failed; ``store`` names the adapter, ``op`` the operation."""

    def __init__(self, message: str, *, store: str = "", op: str = "") -> None:
        super().__init__(message)
        self.store = store
        self.op = op


class StoreUnavailable(StoreError):
    """The store's server can't be reached right now; the operation may be retried."""


class StoreCorrupt(StoreError):
    """Data in the store can't be read; nothing was overwritten."""

    def __init__(self, path: str, reason: str, *, store: str = "") -> None:
        super().__init__(f"{path}: {reason}", store=store, op="load")
        self.path = path
        self.reason = reason


class StoreRejected(StoreError):
    """The store refused records themselves (too large, failed validation): retrying won't help.

    ``keys`` names the refused records when the store says which; ``None``
    when it refused a batch without saying (callers then split the batch).
    """

    def __init__(self, message: str, *, keys: list[str] | None = None, store: str = "", op: str = "") -> None:
        super().__init__(message, store=store, op=op)
        self.keys = keys


class StoreClosed(StoreError):
    """The store was used after ``close()``."""
