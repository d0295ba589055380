"""Sessions as changes: a request's change as a record and its delta, and the one merge of two records.

A request changes some top-level keys of its session (sets some, removes
some). ``record_change`` makes of that change two records: the session as
this process now holds it, and the **delta** to publish and persist, which
holds only the keys the request touched, all stamped with the change's
``(version, origin)`` (``partial=True``, unless the session was new, so the
delta is the whole session). Every replica, the hub and every store merge
what arrives with ``merge_records``:

* **Per top-level key** the change with the higher stamp wins, whether it set
  the key or removed it (``memsession.fields``: a removal is kept as a key
  tombstone, so an older concurrent set can't bring the key back). Two
  requests of one user that change different keys on different workers both
  survive; two that set the same key end with the later stamp everywhere.
* **Per session** ``session.supersedes`` still decides first: a tombstone
  (destroy) beats every key of every live copy; a clear's watermark refuses
  a session whose newest change it covers and, within a newer one, drops the
  keys it covers (``fields.drop_covered``); expiry is per session
  (``created`` the earliest, ``accessed``/``expires`` those of the later
  access).
* ``seen`` (per writer, its newest change merged in) grows by the per-origin
  maximum; ``reflects`` reads it for read-your-writes. A copy names a change
  in ``seen`` only if it holds everything the writer's copy held when it made
  it: a delta carries the ``base`` its change was made on (that copy's
  ``seen``), and a copy that does not reflect all of it takes the delta's keys
  but not its ``seen`` (``_merged_seen``). Otherwise a copy that missed an
  earlier change of the user, made on another worker, would pass for the
  newest once it merged a later one, and be served as such.

Every part of the merge of the data is a maximum, so it is commutative,
associative and idempotent: replicas that merged the same changes hold the
same session in whatever order, however often, and whether they came as
deltas or as whole records (a snapshot, a store row). ``seen`` is the one
part that can lag: a copy that merged a delta before its base names less
than one that merged them the other way round, until a later whole record or
a delta whose base it holds (reads that need the change ask the hub or store
meanwhile; they are never served less). A partial record is never served
alone: a worker merges a delta only into a copy it holds (a session it does
not hold is read from the hub or store when asked for), and the hub
completes one by reading its store (``completed``: a delta taken as all
there is of its session names no change it can't vouch for).

Bounds: key tombstones older than ``KEY_TOMBSTONE_TTL`` before the session's
newest change are dropped (no request or message takes that long, so
nothing they beat can still arrive), and beyond the ``MAX_KEY_TOMBSTONES``
most recent ones (an app removing thousands of distinct keys within the hour
risks only that an older concurrent set of one of the oldest comes back); ``seen`` keeps the ``MAX_SEEN`` most
recent writers (a forgotten writer's change reads as not reflected, unless
the copy is newer than it altogether).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from .admission import MAX_KEY_TOMBSTONES
from .clock import COUNTER_BITS
from .fields import (
    Stamp,
    drop_covered,
    drop_tombstones,
    keep_recent_seen,
    keep_recent_tombstones,
    merge_keys,
    merge_seen,
)
from .session import Record, SessionData, cleared_by, compute_expires, is_flat, pack_data, supersedes

__all__ = [
    "KEY_TOMBSTONE_TTL",
    "MAX_KEY_TOMBSTONES",
    "MAX_SEEN",
    "after_clear",
    "completed",
    "merge_records",
    "record_change",
    "record_set",
    "reflects",
    "seen_of",
    "stamps_of",
]

#: Seconds a removed key's tombstone is kept after the session's newest change.
KEY_TOMBSTONE_TTL = 3600.0
_KEY_TOMBSTONE_SPAN = int(KEY_TOMBSTONE_TTL * 1000) << COUNTER_BITS
#: Most writers a record remembers in ``seen``.
MAX_SEEN = 16
_INF = float("inf")


def stamps_of(record: Record) -> Mapping[str, Stamp]:
    """The stamp of every key of ``record``, removed ones included (``Record.stamps`` spelled out)."""
    if record.stamps is not None:
        return record.stamps
    return dict.fromkeys(record.data, (record.version, record.origin))


def seen_of(record: Record) -> Mapping[int, int]:
    """``Record.seen`` spelled out: per writer origin, its newest change merged into ``record``."""
    return record.seen if record.seen is not None else {record.origin: record.version}


def reflects(record: Record, version: int, origin: int = 0) -> bool:
    """Whether ``record`` reflects the change ``(version, origin)`` (read-your-writes).

    A tombstone reflects everything (nothing after it counts). ``origin`` 0
    (a cookie from before changes were merged) or a writer ``seen`` no longer
    names (more than ``MAX_SEEN`` wrote since) falls back to the session's
    newest version, the one test a whole-value copy allows.
    """
    if record.deleted:
        return True
    seen = seen_of(record)
    merged = seen.get(origin) if origin else None
    if merged is not None:
        return merged >= version
    if origin and len(seen) < MAX_SEEN:
        return False
    return record.version >= version


def _normal_stamps(
    stamps: Mapping[str, Stamp], values: Mapping[str, Any], version: int, origin: int
) -> dict[str, Stamp] | None:
    """None when every key is live and carries ``(version, origin)``: the short form ``Record`` allows."""
    if len(stamps) == len(values):
        own = (version, origin)
        if all(stamp == own for stamp in stamps.values()):
            return None
    return dict(stamps)


def _normal_seen(seen: Mapping[int, int], version: int, origin: int) -> dict[int, int] | None:
    if len(seen) == 1 and seen.get(origin) == version:
        return None
    return dict(seen)


def _holds(record: Record, base: Mapping[int, int]) -> bool:
    """Whether ``record`` reflects every change of ``base`` (a delta's base: what its ``seen`` stands on)."""
    return all(reflects(record, version, origin) for origin, version in base.items())


def _merged_seen(old: Record, new: Record) -> tuple[Mapping[int, int], bool]:
    """``seen`` of ``old`` and ``new`` merged: ``(seen, grew)`` (``grew``: more than ``old``'s).

    The per-writer maximum, except for a delta merged into (or completed by) a
    whole record that does not reflect the delta's ``base``: then the result
    holds the delta's keys but not all the delta's writer held, so only the
    whole record's ``seen`` counts.
    """
    if new.partial != old.partial:
        delta, whole = (new, old) if new.partial else (old, new)
        if delta.base and not _holds(whole, delta.base):
            return dict(seen_of(whole)), whole is new
    return merge_seen(seen_of(old), seen_of(new))


def _merged_base(one: Record, other: Record) -> dict[int, int] | None:
    """What two deltas merged into one stand on: each one's base, less what the other one brings.

    ``other`` brings, of each writer it names, the changes after its own base's
    (given that base, which the result needs too): a need of ``one`` within
    them is only a need of what ``other``'s base needs of that writer.
    """
    need: dict[int, int] = {}
    for first, second in ((one, other), (other, one)):
        if not first.base:
            continue
        brings_from = second.base or {}
        brings_to = seen_of(second)
        for origin, version in first.base.items():
            low = brings_from.get(origin, 0)
            if low < version <= brings_to.get(origin, 0):
                version = low
            if version > need.get(origin, 0):
                need[origin] = version
    return need or None


def completed(record: Record) -> Record:
    """A delta taken as all there is of its session (a hub or store that has nothing else of it).

    It is no longer ``partial``; it names in ``seen`` only what it can vouch
    for: all its writers' changes if it stands on nothing, none if it stands
    on a base it lacks (a read that needs one asks on, as for a lost write).
    """
    if not record.partial:
        return record
    if record.base:
        return replace(record, partial=False, base=None, seen={})
    return replace(record, partial=False)


def _packed_size(data: Mapping[str, Any]) -> int:
    return len(pack_data(data))


def _without_covered(record: Record, cleared: int) -> Record:
    """``record`` without its keys stamped at or below ``cleared``; ``record`` itself if it has none."""
    stamps = stamps_of(record)
    values, kept = drop_covered(record.data, stamps, cleared)
    if kept is stamps:
        return record
    data = dict(values)
    return replace(record, data=data, size=_packed_size(data),
                   stamps=_normal_stamps(kept, data, record.version, record.origin))


def after_clear(record: Record, watermark: int) -> Record | None:
    """What a clear at ``watermark`` leaves of a held ``record``: None if it ends it, else it without the keys it covers.

    A live record whose newest change the clear covers is gone
    (``session.cleared_by``); a newer one loses the keys last changed at or
    before the clear, as ``merge_records(..., cleared=watermark)`` drops them
    from everything merged afterwards. Tombstones stay as they are.
    """
    if record.deleted:
        return record
    if cleared_by(record, watermark):
        return None
    return _without_covered(record, watermark) if record.stamps is not None else record


def merge_records(old: Record | None, new: Record, *, cleared: int = 0) -> Record | None:
    """What a copy ``old`` of one session becomes once ``new`` is merged in; None if that is ``old`` itself.

    The one merge of every replica, the hub, the write-behind queue and every
    store (module docstring). ``cleared``: the merging side's clear
    watermark; keys stamped at or below it are dropped from the result, from
    ``old``'s keys as much as from ``new``'s, so a copy kept from before the
    clear came ends as one that never had them (the caller refuses a live
    ``new`` the watermark covers whole, by ``session.cleared_by``). With no
    ``old``, the result is ``new`` without what ``cleared`` covers.
    """
    if old is None:
        return new if new.deleted or not cleared else _without_covered(new, cleared)
    if new.deleted or old.deleted:
        return new if supersedes(new, old) else None
    values: Mapping[str, Any]
    stamps: Mapping[str, Stamp]
    seen: Mapping[int, int]
    values, stamps, won = merge_keys(old.data, stamps_of(old), new.data, stamps_of(new))
    seen, grew = _merged_seen(old, new)
    later = new.accessed > old.accessed
    completes = old.partial and not new.partial
    partial = old.partial and new.partial
    base = _merged_base(old, new) if partial else None
    rebased = partial and base != old.base  # ``new`` brings changes ``old`` stood on, even if none won
    if not (won or grew or completes or rebased):
        # Nothing of the data is newer: at most a later access (a touch) slides the expiry, and the
        # clear still drops what it covers of ``old``, or copies would differ by what they held then.
        kept = _without_covered(old, cleared) if cleared else old
        if later:
            return kept.touched(new.accessed, new.expires)
        return None if kept is old else kept
    version, origin = max((old.version, old.origin), (new.version, new.origin))
    reshaped = won
    if cleared:
        values, uncovered = drop_covered(values, stamps, cleared)
        reshaped = reshaped or uncovered is not stamps
        stamps = uncovered
    stamps = keep_recent_tombstones(values, drop_tombstones(values, stamps, version - _KEY_TOMBSTONE_SPAN),
                                    MAX_KEY_TOMBSTONES)
    seen = keep_recent_seen(seen, MAX_SEEN)
    accessed, expires = (new.accessed, new.expires) if later else (old.accessed, old.expires)
    data = dict(values)
    return Record(
        old.key,
        data,
        version,
        origin,
        min(old.created, new.created),
        accessed,
        expires,
        False,
        (old.flat and new.flat) if won else old.flat,
        _packed_size(data) if reshaped else old.size,
        _normal_stamps(stamps, data, version, origin),
        _normal_seen(seen, version, origin),
        partial,
        base,
    )


def record_set(
    base: Record | None,
    key: str,
    data: SessionData,
    *,
    version: int,
    origin: int,
    wall: float,
    idle_timeout: float | None,
    max_age: float | None,
    flat: bool,
    size: int,
) -> Record:
    """A write of the whole session (``SessionCache.set``) on ``base``: the session as now held.

    The held record of ``record_change`` with every key of ``data`` changed
    and every other key ``base`` holds removed; the delta is not built (the
    whole session travels). Its common cases, a new session and a rewrite that
    removes no key of a base without key tombstones, are made directly; the
    rest go through ``record_change``. The arguments as there.
    """
    live = base if base is not None and not base.deleted else None
    created = wall if live is None else live.created
    # ``session.compute_expires``, spelled out on this path.
    expires = wall + idle_timeout if idle_timeout is not None else _INF
    if max_age is not None and created + max_age < expires:
        expires = created + max_age
    if live is None:
        return Record(key, data, version, origin, wall, wall, expires, False, flat, size, None, None, False)
    if live.stamps is None and live.data.keys() <= data.keys():
        # Every key is set by this change and none was removed before or now: the short form of stamps.
        if live.seen is None and live.origin == origin:
            seen = None
        else:
            seen = _normal_seen(keep_recent_seen({**seen_of(live), origin: version}, MAX_SEEN), version, origin)
        return Record(key, data, version, origin, created, wall, expires, False, flat, size, None, seen, False)
    removed = [name for name in live.data if name not in data]
    held, _delta = record_change(base, key, data, data, removed, version=version, origin=origin, wall=wall,
                                 idle_timeout=idle_timeout, max_age=max_age, flat=flat, size=size)
    return held


def record_change(
    base: Record | None,
    key: str,
    data: SessionData,
    changed: Iterable[str],
    removed: Iterable[str],
    *,
    version: int,
    origin: int,
    wall: float,
    idle_timeout: float | None,
    max_age: float | None,
    flat: bool,
    size: int,
    delta_size: int | None = None,
) -> tuple[Record, Record]:
    """A change made on ``base``: ``(the session as now held, the delta to publish and persist)``.

    ``data`` is the whole session after the change, already checked and
    copied (``session.prepare_packed``; ``flat`` and ``size`` from there;
    ``delta_size``: the delta's data serialized, if the caller packed it);
    ``changed`` names the keys the change set and ``removed`` those it
    removed (each becomes a key tombstone). ``(version, origin)`` must be
    later than everything ``base`` holds (a ``HybridClock`` that observed
    it). The held record is ``merge_records(base, delta)``; the delta is
    ``partial`` unless there was no live base (then it is the whole session).
    Raises ``ValueError`` for a key both changed and removed.
    """
    changed = tuple(changed)
    gone = tuple(dict.fromkeys(removed))
    both = set(changed).intersection(gone)
    if both:
        raise ValueError(f"keys both set and removed: {sorted(both)!r}")
    stamp = (version, origin)
    live_base = base if base is not None and not base.deleted else None
    created = live_base.created if live_base is not None else wall
    expires = compute_expires(created, wall, idle_timeout, max_age)
    touched = dict.fromkeys((*changed, *gone), stamp)
    if live_base is None:
        stamps: Mapping[str, Stamp] = touched
        seen: Mapping[int, int] = {origin: version}
    else:
        stamps = {**stamps_of(live_base), **touched}
        stamps = keep_recent_tombstones(data, drop_tombstones(data, stamps, version - _KEY_TOMBSTONE_SPAN),
                                        MAX_KEY_TOMBSTONES)
        seen = keep_recent_seen({**seen_of(live_base), origin: version}, MAX_SEEN)
    held = Record(key, data, version, origin, created, wall, expires, False, flat, size,
                  _normal_stamps(stamps, data, version, origin), _normal_seen(seen, version, origin), False)
    if live_base is None and not gone:
        return held, held  # a new session: the delta is the whole of it
    delta_data = {name: data[name] for name in changed}
    delta = Record(
        key, delta_data, version, origin, created, wall, expires, False, is_flat(delta_data),
        _packed_size(delta_data) if delta_size is None else delta_size, dict(touched) if gone else None, None,
        live_base is not None, None if live_base is None else _base_of(live_base),
    )
    return held, delta


def _base_of(record: Record) -> dict[int, int]:
    """What a delta made on ``record`` stands on: its ``seen`` (shared: records are not changed in place)."""
    seen = record.seen
    return {record.origin: record.version} if seen is None else seen
