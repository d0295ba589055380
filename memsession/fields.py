"""Session data as fields: the one per-key merge rule of every replica, hub and store.

A session's data is a map of top-level keys. Each key carries the stamp
``(version, origin)`` of the change that last set it or removed it; versions
come from the writer's hybrid logical clock (``memsession.clock``), origins
are writer ids, so the stamps of two distinct changes are distinct and the
higher stamp is the later change.

The rule, in words
------------------

*Per top-level key, the change with the higher stamp wins, whether it set
the key or removed it; a change that loses leaves nothing behind.* A removal
is kept as a key tombstone (the key is in ``stamps`` but not in ``values``),
so an older set that arrives later, from a request that ran concurrently on
another worker, can't bring the key back. Two requests of one user that set
different keys on different workers both survive; two that set the same key
end with the later one on every replica.

``seen`` records, per origin, the highest version of a change by that origin
merged in; ``includes(fields, stamp)`` answers read-your-writes ("does this
copy reflect the change my cookie names?").

Why replicas converge
---------------------

Per key, ``merge`` takes the maximum of two stamps under a total order, and
per origin the maximum of two versions. A maximum is commutative, associative
and idempotent, and so is a product of maxima: ``merge`` is the join of a
semilattice. Replicas that have merged the same changes therefore hold the
same state, whatever order the changes arrived in, however often each was
delivered, and whether they came one change at a time or folded into a
state. (Stamps of distinct changes being distinct is what makes the per-key
order total; equal stamps name one change and so one value.)

Deltas
------

``change`` returns the new state and the delta to publish: only the keys the
request set or removed, with the new stamp, and ``seen = {origin: version}``.
By construction the new state is ``merge(base, delta)``, so for any state
``s`` that already contains ``base`` (``merge(s, base) == s``)::

    merge(s, delta) == merge(merge(s, base), delta) == merge(s, merge(base, delta)) == merge(s, new)

by associativity: a receiver that has the base needs only the delta. A
receiver that lacks some of the base still converges once the missing
changes reach it, by delta or by merging a full state (a snapshot repair).

Read-your-writes, and when ``includes`` may be trusted
-------------------------------------------------------

``seen[origin] >= version`` claims every change of that origin up to that
version, not only the last one. The claim holds when (1) a writer makes each
change on a base that reflects its own earlier changes of the session (it
applies them locally first, and a writer that lost its copy reads the newest
state back before writing) and (2) each replica merges one origin's deltas in
that origin's order, repairing a gap by merging a full state before it trusts
``includes`` again (the bus numbers every publisher's messages and detects
gaps for exactly this). Out-of-order deltas still converge; only ``includes``
may say yes early until the gap is repaired. Everything that forgets
(``compact``) turns a yes into a no, never the other way: a no makes a reader
wait or read through, a false yes would serve stale data as fresh.

Clears
------

``clear_covered(fields, w)`` drops every key, value or tombstone, whose stamp
version is ``<= w``: what a clear at version ``w`` ends. It keeps ``seen``
(those changes were reflected, then cleared). Per key, the winner of a merge
is older than ``w`` exactly when every candidate is, so::

    clear_covered(merge(a, b), w) == merge(clear_covered(a, w), clear_covered(b, w))

A replica that has applied ``w`` applies it to everything it merges from then
on (``clear_covered(merge(state, incoming), w)``); then a tombstone it
dropped can't be undone, because whatever it had beaten is older still and
covered too.

Bounds
------

``compact(fields, max_seen=..., tombstone_floor=...)`` keeps tombstones and
``seen`` from growing without limit:

* A key tombstone at or below ``tombstone_floor`` is dropped. Safe when the
  floor is *stable*: every change with a version at or below it has been
  merged by every replica and store, and none is still in flight (in
  practice: a version older than the longest a request or a message can take,
  as session tombstones are kept). Everything such a tombstone beat has then
  lost everywhere and can't arrive again, and every newer change beats it
  anyway: merging changes newer than the floor gives the same values with or
  without it.
* ``seen`` keeps the ``max_seen`` entries with the highest ``(version,
  origin)``, the most recent writers; a forgotten origin's changes then read
  as not included (a no, never a false yes). Merging never needs ``seen``.

Live values and their stamps are never dropped: a live value needs its stamp
to compete with the next change of its key.

The module is pure: no I/O, no threads, no clocks. Values are treated as
immutable; whoever hands them to request code copies them first.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "EMPTY",
    "Fields",
    "Stamp",
    "change",
    "clear_covered",
    "compact",
    "drop_covered",
    "drop_tombstones",
    "includes",
    "is_empty",
    "keep_recent_seen",
    "keep_recent_tombstones",
    "latest_version",
    "merge",
    "merge_keys",
    "merge_seen",
]

#: ``(version, origin)``: a hybrid-logical-clock version and the writer's id; higher is later.
Stamp = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Fields:
    """The data of one session as fields: live values, the stamp of every key, and what was merged.

    ``values``: the present top-level keys. ``stamps``: the stamp of every
    present key and of every removed one (a key tombstone). ``seen``: origin
    -> highest version of a change by that origin merged in. The mappings are
    read-only copies of what was passed.
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    stamps: Mapping[str, Stamp] = field(default_factory=dict)
    seen: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unstamped = [key for key in self.values if key not in self.stamps]
        if unstamped:
            raise ValueError(f"values without a stamp: {sorted(unstamped)!r}")
        # Copies behind read-only views: a state is shared by every reader of a replica.
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "stamps", MappingProxyType(dict(self.stamps)))
        object.__setattr__(self, "seen", MappingProxyType(dict(self.seen)))

    @property
    def removed(self) -> frozenset[str]:
        """The key tombstones: keys whose last change removed them."""
        return frozenset(self.stamps.keys() - self.values.keys())


#: No keys, nothing merged: the base of a new session.
EMPTY = Fields()


def merge_keys(
    values: Mapping[str, Any], stamps: Mapping[str, Stamp], in_values: Mapping[str, Any], in_stamps: Mapping[str, Stamp]
) -> tuple[dict[str, Any], dict[str, Stamp], bool]:
    """The per-key rule on plain maps: ``(values, stamps, won)`` after merging ``in_*`` into the first pair.

    Per key the higher stamp wins, its value or its removal; ``won`` says
    whether any incoming key won (False: the result equals the first pair).
    The inputs are not changed. ``merge`` and every record merge use this.
    """
    out_values: dict[str, Any] | None = None
    out_stamps: dict[str, Stamp] | None = None
    for key, stamp in in_stamps.items():
        current = stamps.get(key)
        if current is not None and current >= stamp:
            continue
        if out_stamps is None:
            out_values, out_stamps = dict(values), dict(stamps)
        assert out_values is not None
        out_stamps[key] = stamp
        if key in in_values:
            out_values[key] = in_values[key]
        else:
            out_values.pop(key, None)
    if out_stamps is None:
        return dict(values), dict(stamps), False
    assert out_values is not None
    return out_values, out_stamps, True


def merge_seen(seen: Mapping[int, int], in_seen: Mapping[int, int]) -> tuple[dict[int, int], bool]:
    """Per origin the higher version: ``(seen, grew)``; ``grew`` is False when ``in_seen`` adds nothing."""
    out: dict[int, int] | None = None
    for origin, version in in_seen.items():
        if version > seen.get(origin, 0):
            if out is None:
                out = dict(seen)
            out[origin] = version
    return (dict(seen), False) if out is None else (out, True)


def merge(a: Fields, b: Fields) -> Fields:
    """Per key the higher stamp wins (its value, or its removal); ``seen`` is the per-origin maximum.

    Commutative, associative and idempotent (see the module docstring). Equal
    stamps name one change, so which side an equal stamp is taken from does
    not matter; ``a``'s is kept.
    """
    if a is b:
        return a
    values, stamps, _ = merge_keys(a.values, a.stamps, b.values, b.stamps)
    seen, _ = merge_seen(a.seen, b.seen)
    return Fields(values, stamps, seen)


def change(
    base: Fields, changed: Mapping[str, Any], removed: Iterable[str], stamp: Stamp
) -> tuple[Fields, Fields]:
    """A request's change to ``base``: ``(new state, delta to publish)``, with ``new == merge(base, delta)``.

    ``changed`` maps the keys the request set to their new values; ``removed``
    names the keys it deleted (each becomes a key tombstone, present in
    ``base`` or not). The delta holds only those keys, all stamped ``stamp``,
    and ``seen = {origin: version}``.

    ``stamp`` must come from a clock that has observed ``latest_version(base)``
    (``HybridClock.observe``), so the change is later than everything it was
    made on. Raises ``ValueError`` for a key both set and removed, a version
    below 1, a stamp not above the stamp of every key it touches (the
    request's own write would lose on its own worker), or a version not above
    what ``base`` has already merged from this origin (an origin's versions
    only grow, so that stamp can't be a new change).
    """
    version, origin = stamp
    gone = tuple(dict.fromkeys(removed))
    both = changed.keys() & set(gone)
    if both:
        raise ValueError(f"keys both set and removed: {sorted(both)!r}")
    if version < 1:
        raise ValueError(f"versions start at 1, got {version}")
    if base.seen.get(origin, 0) >= version:
        raise ValueError(
            f"origin {origin} already merged version {base.seen[origin]}; {version} is not a new change"
        )
    stamps = dict.fromkeys((*changed, *gone), stamp)
    stale = sorted(key for key in stamps if base.stamps.get(key, (0, 0)) >= stamp)
    if stale:
        raise ValueError(f"stamp {stamp} is not later than the stamps of {stale!r}")
    delta = Fields(changed, stamps, {origin: version})
    return merge(base, delta), delta


def includes(fields: Fields, stamp: Stamp) -> bool:
    """Whether the change with ``stamp`` is reflected in ``fields`` (merged, possibly since overwritten).

    True for a writer's own change right after ``change``, and it stays true
    under ``merge``. When it may be trusted for other origins' changes: see
    the module docstring.
    """
    version, origin = stamp
    return fields.seen.get(origin, 0) >= version


def drop_covered(
    values: Mapping[str, Any], stamps: Mapping[str, Stamp], watermark: int
) -> tuple[Mapping[str, Any], Mapping[str, Stamp]]:
    """``clear_covered`` on plain maps: the pair without every key stamped at or below ``watermark`` (same objects if none)."""
    covered = [key for key, (version, _origin) in stamps.items() if version <= watermark]
    if not covered:
        return values, stamps
    out_values = dict(values)
    out_stamps = dict(stamps)
    for key in covered:
        del out_stamps[key]
        out_values.pop(key, None)
    return out_values, out_stamps


def clear_covered(fields: Fields, watermark: int) -> Fields:
    """``fields`` without every key (value or tombstone) whose stamp version is ``<= watermark``.

    What a clear at version ``watermark`` ends; ``seen`` is kept. Commutes
    with ``merge`` for a watermark both sides apply (module docstring).
    """
    values, stamps = drop_covered(fields.values, fields.stamps, watermark)
    if stamps is fields.stamps:
        return fields
    return Fields(values, stamps, fields.seen)


def drop_tombstones(values: Mapping[str, Any], stamps: Mapping[str, Stamp], floor: int) -> Mapping[str, Stamp]:
    """``stamps`` without the key tombstones stamped at or below ``floor`` (the same object if none)."""
    if len(stamps) == len(values):
        return stamps  # every stamped key is live: no tombstone at all
    kept = {key: stamp for key, stamp in stamps.items() if key in values or stamp[0] > floor}
    return stamps if len(kept) == len(stamps) else kept


def keep_recent_tombstones(values: Mapping[str, Any], stamps: Mapping[str, Stamp], limit: int) -> Mapping[str, Stamp]:
    """``stamps`` with at most ``limit`` key tombstones, the ones with the highest stamps (the same object if within).

    Keeping the top ``limit`` of the union is what merging two bounded sets
    and bounding again gives, so the bound commutes with ``merge``.
    """
    if len(stamps) - len(values) <= limit:
        return stamps
    removed = [(stamp, key) for key, stamp in stamps.items() if key not in values]
    kept = {key for _stamp, key in heapq.nlargest(limit, removed)}
    return {key: stamp for key, stamp in stamps.items() if key in values or key in kept}


def keep_recent_seen(seen: Mapping[int, int], max_seen: int) -> Mapping[int, int]:
    """``seen`` cut to the ``max_seen`` highest ``(version, origin)`` entries (the same object if within)."""
    if len(seen) <= max_seen:
        return seen
    return dict(heapq.nlargest(max_seen, seen.items(), key=lambda entry: (entry[1], entry[0])))


def is_empty(fields: Fields) -> bool:
    """No live values (tombstones and ``seen`` may remain)."""
    return not fields.values


def compact(fields: Fields, *, max_seen: int, tombstone_floor: int) -> Fields:
    """``fields`` without key tombstones at or below ``tombstone_floor`` and with at most ``max_seen`` origins.

    ``tombstone_floor`` must be stable (module docstring, Bounds): then
    merging any change newer than the floor gives the same values, and the
    same compacted state, with or without the tombstones dropped. ``seen``
    keeps the ``max_seen`` highest ``(version, origin)`` entries; compacting
    commutes with merging for ``seen`` whatever is merged. Live values and
    their stamps are never dropped.
    """
    if max_seen < 0:
        raise ValueError(f"max_seen must be 0 or more, got {max_seen}")
    stamps = drop_tombstones(fields.values, fields.stamps, tombstone_floor)
    seen = keep_recent_seen(fields.seen, max_seen)
    if stamps is fields.stamps and seen is fields.seen:
        return fields
    return Fields(fields.values, stamps, seen)


def latest_version(fields: Fields) -> int:
    """The highest version ``fields`` holds or has merged (0 for none): what a writer's clock must observe."""
    return max(
        max((version for version, _origin in fields.stamps.values()), default=0),
        max(fields.seen.values(), default=0),
    )
