"""The session record, session ids, and the rules for session data.

A record is immutable: every change makes a new one with a new version. The
same expiry rule holds everywhere a record goes (cache, wire, stores, cookie)::

    expires = min(accessed + idle_timeout, created + max_age)

``created``, ``accessed`` and ``expires`` are wall-clock seconds (they travel);
the cache converts them to monotonic time on arrival.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from .admission import MAX_DEPTH, MAX_ITEMS, MAX_VERSION, scan_data
from .errors import InvalidSessionId, SessionDataError, SessionTooLarge

__all__ = [
    "MAX_VERSION",
    "Record",
    "SessionData",
    "check_sid",
    "checked_key",
    "cleared_by",
    "compute_expires",
    "copy_data",
    "copy_tree",
    "is_session_key",
    "is_valid_sid",
    "legacy_key",
    "new_id",
    "pack_data",
    "prepare_data",
    "prepare_packed",
    "session_key",
    "supersedes",
    "touched_copy",
]

SessionData = dict[str, Any]

#: 32 random bytes, base64url without padding: 43 characters.
SID_BYTES = 32
SID_LENGTH = 43


def _byte_table(allowed: bytes) -> bytes:
    """A ``bytes.translate`` table: 0 for each allowed byte, 1 for every other."""
    return bytes(0 if byte in allowed else 1 for byte in range(256))


#: An id is 43 of the base64url alphabet: its ASCII bytes translated by this hold no 1 (two C calls, no regex).
_SID_TABLE = _byte_table(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def new_id() -> str:
    """A new session id: 256 bits from ``secrets``, URL- and cookie-safe."""
    return secrets.token_urlsafe(SID_BYTES)


def is_valid_sid(sid: object) -> bool:
    """Cheap shape check: could memsession have issued this id?"""
    return (
        type(sid) is str
        and len(sid) == SID_LENGTH
        and sid.isascii()
        and 1 not in sid.encode().translate(_SID_TABLE)
    )


def check_sid(sid: object) -> str:
    """Return ``sid`` or raise ``InvalidSessionId``."""
    if (
        type(sid) is str
        and len(sid) == SID_LENGTH
        and sid.isascii()
        and 1 not in sid.encode().translate(_SID_TABLE)
    ):
        return sid
    raise InvalidSessionId(sid)


#: A session key: SHA-256 of the id, 64 lowercase hex digits.
KEY_LENGTH = 64
_KEY_TABLE = _byte_table(b"0123456789abcdef")


def session_key(sid: str) -> str:
    """The key a session is known by outside the request that presented its id: SHA-256 of the id, in hex.

    Only the cookie and the worker's request handling see the id; the cache,
    the bus, the hub, snapshots and every store hold this digest, so a copied
    row, file line or bus capture can't be turned into a cookie (hashing the
    digest again gives another key, and it is not even shaped like an id).

    A plain SHA-256 because the id is 256 random bits from ``secrets``: no
    guessing can find a preimage, so a slow password hash (bcrypt, scrypt,
    argon2) would add milliseconds per request and nothing else, and a keyed
    hash (HMAC) would add one more secret that every worker, hub and store
    tool must share, whose rotation would orphan every session. Hex, not
    base64: 64 characters can never be mistaken for a 43-character id, which
    is how stores written before ids were hashed are recognised
    (``legacy_key``).
    """
    # Any str hashes (a valid id is ASCII): a malformed one then simply matches nothing.
    return hashlib.sha256(sid.encode("utf-8", "surrogatepass")).hexdigest()


def checked_key(sid: object) -> str:
    """``session_key(check_sid(sid))``: the key of a valid id, or ``InvalidSessionId``."""
    if (
        type(sid) is str
        and len(sid) == SID_LENGTH
        and sid.isascii()
        and 1 not in (raw := sid.encode()).translate(_SID_TABLE)
    ):
        return hashlib.sha256(raw).hexdigest()  # an ASCII id: the bytes ``session_key`` hashes
    raise InvalidSessionId(sid)


def is_session_key(key: object) -> bool:
    """Could ``key`` be a session key (``session_key`` of some id)?"""
    return (
        type(key) is str
        and len(key) == KEY_LENGTH
        and key.isascii()
        and 1 not in key.encode().translate(_KEY_TABLE)
    )


def legacy_key(key: str) -> str | None:
    """The key a record stored under a raw session id (before ids were hashed) now belongs to, or None.

    Stores written by memsession 0.1 keyed sessions by the id itself; a key
    shaped like an id is such a row, and moves to the id's digest.
    """
    return session_key(key) if is_valid_sid(key) else None


def compute_expires(
    created: float, accessed: float, idle_timeout: float | None, max_age: float | None
) -> float:
    """``min(accessed + idle_timeout, created + max_age)``; ``inf`` when neither is set."""
    idle_end = accessed + idle_timeout if idle_timeout is not None else math.inf
    age_end = created + max_age if max_age is not None else math.inf
    return min(age_end, idle_end)


@dataclass(slots=True)
class Record:
    """One version of one session, as it lives in caches, on the bus and in stores.

    Records are never changed after they are made: a change is a new record
    (``touched`` for an access). They are not frozen only because a frozen
    dataclass takes five times as long to build, on every write. ``data``
    belongs to the record too; ``copy_data`` hands callers a copy. ``deleted`` marks a tombstone (``data`` is then empty).
    ``version`` is a hybrid-logical-clock value and ``origin`` the writer's
    id: the stamp of the newest change merged in. ``supersedes`` orders two
    records of the same key as whole sessions (destroy, expiry); their data
    merges key by key (``memsession.changes.merge_records``).
    """

    key: str
    data: SessionData
    version: int
    origin: int
    created: float
    accessed: float
    expires: float
    deleted: bool = False
    #: True when every value is a scalar, so a shallow copy is a full copy.
    flat: bool = field(default=True, compare=False, repr=False)
    #: Serialized size of ``data`` in bytes (msgpack), for size accounting.
    size: int = field(default=0, compare=False, repr=False)
    #: The stamp ``(version, origin)`` of the change that last set or removed each top-level key:
    #: a key in ``stamps`` but not in ``data`` was removed (a key tombstone). None: every key of
    #: ``data`` carries the record's own ``(version, origin)`` and none was removed.
    stamps: dict[str, tuple[int, int]] | None = None
    #: Per writer origin, the highest version of its changes merged in (read-your-writes).
    #: None: ``{origin: version}``.
    seen: dict[int, int] | None = None
    #: Only what one change touched (a delta), not the whole session: merged into a copy, never served alone.
    partial: bool = False
    #: For a delta, what its ``seen`` stands on: per writer, the newest change the copy it was made on
    #: had merged in. A copy merging the delta takes its ``seen`` in only if it reflects all of these
    #: (``changes.merge_records``). None: a whole record, or a delta that needs nothing.
    base: dict[int, int] | None = None

    def expired(self, wall_now: float) -> bool:
        return self.expires <= wall_now

    def touched(self, accessed: float, expires: float) -> Record:
        """The same version with a later access time (touches don't bump the version)."""
        return replace(self, accessed=accessed, expires=expires)


def supersedes(new: Record, old: Record | None) -> bool:
    """Whether ``new`` replaces ``old`` (same key): the one merge rule of every replica, hub and store.

    * A tombstone beats any live record (destroy is final: a late write never
      resurrects), except a tombstone that was already dead when the live
      record was written (``old.expires <= new.accessed``): it forgets what it
      had beaten, as one swept from memory does.
    * Otherwise the higher ``(version, origin)`` wins.
    * The same ``(version, origin)`` with a later ``accessed`` is a touch (an
      access that slid the expiry) and replaces the copy, so sliding expiry
      travels and survives restarts.

    Apart from the dead tombstone, this is a join: replicas that see the same
    records in any order converge. Stores state the same rule in their own
    terms (PostgreSQL's upsert guard, CouchDB's conflict handling); a test
    checks them against this function.
    """
    if old is None:
        return True
    if new.deleted != old.deleted:
        return new.deleted or old.expires <= new.accessed
    a, b = (new.version, new.origin), (old.version, old.origin)
    return a > b or (a == b and new.accessed > old.accessed)


def touched_copy(
    local: Record | None, version: int, origin: int, accessed: float, expires: float
) -> Record | None:
    """The record a remote touch of ``(version, origin)`` makes of ``local``, or None if it does not apply.

    A touch carries no data: it slides the expiry of the one version it names,
    so it applies only to that live version and only if it is a later access.
    """
    if (
        local is None
        or local.deleted
        or local.version != version
        or local.origin != origin
        or accessed <= local.accessed
    ):
        return None
    return local.touched(accessed, expires)


def cleared_by(record: Record, watermark: int) -> bool:
    """Whether a clear at ``watermark`` removed ``record`` (and refuses it from now on).

    Only live records: a tombstone is never cleared, since one may already
    have beaten a newer live copy somewhere and "a tombstone beats any live
    version" must hold alike on every replica. Versions start above 0, so
    watermark 0 means "never cleared".
    """
    return not record.deleted and record.version <= watermark


_COPIED = frozenset((dict, list, tuple))
#: One msgpack ``Packer`` per thread: ``msgpack.packb`` builds a new one, with its buffer, on every call.
_packers = threading.local()


def pack_data(data: Any) -> bytes:
    """``msgpack.packb(data, use_bin_type=True)``, by this thread's reused ``Packer``."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(data)  # resets its buffer after each call, and after a failed one


def _copy_value(value: Any) -> Any:
    """Deep copy of an allowed value; tuples become lists."""
    kind = type(value)
    if kind is dict:
        return {k: _copy_value(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_copy_value(v) for v in value]
    return value


def prepare_data(
    data: Mapping[str, Any], max_bytes: int, max_items: int = MAX_ITEMS
) -> tuple[SessionData, int, bool]:
    """``prepare_packed`` with the serialized size instead of the serialized bytes."""
    copy, packed, flat = prepare_packed(data, max_bytes, max_items)
    return copy, len(packed), flat


def prepare_packed(
    data: Mapping[str, Any], max_bytes: int, max_items: int = MAX_ITEMS
) -> tuple[SessionData, bytes, bool]:
    """Validate session data and take a private copy of it.

    Returns ``(copy, serialized, flat)``: ``serialized`` is the msgpack form
    the size limit is measured on (the bus sends these very bytes). Raises ``SessionDataError`` (a
    ``TypeError``) naming the key path of the first bad value (the data rule of
    ``admission.scan_data``: allowed types, depth, at most ``max_items`` values), or
    ``SessionTooLarge``. Tuples come back as lists, as they would from JSON.
    """
    if type(data) is not dict and not isinstance(data, Mapping):
        raise SessionDataError("session", data, "session data must be a mapping")
    flat = scan_data(data, MAX_DEPTH, max_items)
    packed = pack_data(data if type(data) is dict else dict(data))
    if len(packed) > max_bytes:
        raise SessionTooLarge(len(packed), max_bytes)
    if flat:
        return dict(data), packed, True
    return {k: _copy_value(v) if type(v) in _COPIED else v for k, v in data.items()}, packed, False


def is_flat(data: Mapping[str, Any]) -> bool:
    """True when no value is a container (a shallow copy is then a full copy)."""
    for value in data.values():
        if isinstance(value, (dict, list, tuple)):
            return False
    return True


def _copy_list(value: list[Any]) -> list[Any]:
    out = value.copy()
    for index, item in enumerate(out):
        kind = type(item)
        if kind is list:
            out[index] = _copy_list(item)
        elif kind is dict:
            out[index] = _copy_dict(item)
    return out


def _copy_dict(value: dict[str, Any]) -> dict[str, Any]:
    out = value.copy()
    for key, item in out.items():
        kind = type(item)
        if kind is list:
            # A list's own loop, here rather than in _copy_list: a session's lists are mostly of scalars.
            copy = item.copy()
            for index, element in enumerate(copy):
                element_kind = type(element)
                if element_kind is list:
                    copy[index] = _copy_list(element)
                elif element_kind is dict:
                    copy[index] = _copy_dict(element)
            out[key] = copy
        elif kind is dict:
            out[key] = _copy_dict(item)
    return out


def copy_tree(data: SessionData) -> SessionData:
    """A deep copy of session data as records hold it (dicts, lists and immutable scalars).

    Each container is copied whole in C first; only its container items are
    then replaced by copies of their own.
    """
    return _copy_dict(data)


def copy_data(record: Record) -> SessionData:
    """A copy of the record's data the caller may mutate freely.

    Record data holds only dicts, lists and immutable scalars (``prepare_data``
    turned tuples into lists), so copying the containers is a deep copy.
    """
    return dict(record.data) if record.flat else _copy_dict(record.data)
