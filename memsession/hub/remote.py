"""Changes other hosts made to the store this host shares with them, applied in this host's hub thread.

A host learns of another host's write from the store's change feed
(``persist.feed``): the session's key, the stored record's ``(version,
origin)``, whether it is a tombstone, or a clear's watermark; never data.
The hub applies each so that no process of this host serves a copy older
than the store's:

* a **tombstone** is merged as one (it beats every live copy here, so the
  session can't come back) and relayed to the workers;
* a **clear** raises the watermark (nothing written before it is kept
  anywhere on this host) and is relayed;
* a **live change** drops the hub's copy unless it already reflects that
  change (``changes.reflects``), and an INVALIDATE is relayed, so that each
  worker drops its own copy unless it reflects it. The next read of that
  session on this host asks the hub, which reads it back from the store (one
  primary-key read, ``hub.reads``): the read-through of a near cache.

A store read under way while a change arrives may bring the row from
before it; the hub answers with it (the worker that needs the change asks
again) but does not keep it (``after_read_back``): each key whose change no
copy here reflected yet has its floor (``HubState.remote_floor``, at most
``FLOOR_KEYS``), and a copy below its floor is read again when next asked for.

While the feed is **silent** (it could not read the log for a while: the
database is unreachable, or the sidecar has just started and not caught up
yet) no copy here can be vouched for: another host may have changed or ended
any session since. ``suspect_all`` marks every partition suspect; the hub's
beat says so to the workers, which then check each hit with the hub, and the
hub answers those from a store read (``HubState.needs_read_back``); no answer
is a refusal, never an unchecked copy. ``trust_again`` ends it once the feed
has read the log to its end (what it missed meanwhile was applied first).

None of this goes back to the store (it came from there), so a change is
never echoed from host to host. A hub that takes remote changes never
believes it holds every session (``HubState.holds_all``): a miss may be a
session another host wrote.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from .. import wire
from ..changes import reflects
from ..partitions import ALL, covers
from ..session import Record

if TYPE_CHECKING:
    from .state import HubState

__all__ = ["FLOOR_KEYS", "RemoteChange", "after_read_back", "apply_remote", "below_floor", "drop_partitions",
           "invalidate_all", "suspect_all", "trust_again"]

#: Keys whose remote floor is remembered. A floor matters only while a read of its key is under way
#: (milliseconds); past the bound the oldest goes: 10,000 is seconds of changes at thousands a second.
FLOOR_KEYS = 10_000


class RemoteChange(Protocol):
    """What a change feed says of one write elsewhere (``persist.feed.Change`` is one): no data."""

    @property
    def key(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def origin(self) -> int: ...
    @property
    def deleted(self) -> bool: ...
    @property
    def cleared(self) -> int: ...


def apply_remote(state: HubState, changes: Iterable[RemoteChange], tombstone_ttl: float) -> list[list[bytes]]:
    """Apply ``changes`` (in feed order) to ``state``; the frames to publish to this host's workers.

    ``tombstone_ttl``: how long a tombstone made from a remote destroy lives
    here (the store keeps its own). Counted in the hub's stats as
    ``remote_changes`` and ``remote_invalidated``.
    """
    state.holds_all = False
    counts = state.counts
    out: list[list[bytes]] = []
    for change in changes:
        counts["remote_changes"] += 1
        if change.cleared:
            if state.clear(change.cleared, stored=True):
                out.append(state.relay_clear(change.cleared))
        elif change.deleted:
            wall = state.clock.wall()
            until = wall + tombstone_ttl
            tombstone = Record(change.key, {}, change.version, change.origin, wall, wall, until, True)
            state.remote_floor.pop(change.key, None)  # the tombstone beats whatever a read brings
            if state.merge(tombstone, stored=True):
                out.append(state.relay(tombstone))
        else:
            if _drop_unless_reflected(state, change):
                counts["remote_invalidated"] += 1
            if change.key not in state.replica:  # dropped, or a read of it may be under way
                _raise_floor(state, change.key, change.version, change.origin)
            out.append(_invalidate_frames(state, change.key, change.version, change.origin))
    return out


def after_read_back(state: HubState, key: str) -> None:
    """A store read of ``key`` was merged and answered: keep the copy only if it reflects the key's floor.

    A copy that does is relayed if a stale one was dropped for it (``below_floor``): the workers that
    hold the older copy, or took a snapshot without the key meanwhile, get the store's.
    """
    floor = state.remote_floor.get(key)
    if floor is None:
        return
    version, origin, refresh = floor
    held = state.replica.get(key)
    if held is not None and not held.deleted and not reflects(held, version, origin):
        _forget(state, key)  # read before the change was committed: read again when next asked for
        state.counts["remote_stale_reads"] += 1
        return
    del state.remote_floor[key]
    if refresh and held is not None:
        state.outbox.append(state.relay(held))


def below_floor(state: HubState, key: str) -> None:
    """A copy from this host (a push, a worker's change) was merged into ``key``: kept if it holds the floor.

    One that does not (a worker pushed the copy it held before the other
    host's change, after a restart) is still written to the store (merged
    there key by key with the newer row). Here it is dropped, an INVALIDATE
    naming the floor drops it from the workers it reached, and the key is
    read back from the store; that copy is relayed (``after_read_back``), so
    a worker whose snapshot came without the key (its repair pushed the stale
    copy, then asked for one) holds the newest copy all the same.
    """
    floor = state.remote_floor.get(key)
    held = state.replica.get(key)
    if floor is None or held is None:
        return
    version, origin, _ = floor
    if held.deleted or reflects(held, version, origin):
        del state.remote_floor[key]  # caught up: the floor has done its work
        return
    _forget(state, key)
    state.counts["remote_stale_reads"] += 1
    state.remote_floor[key] = (version, origin, True)
    state.outbox.append(_invalidate_frames(state, key, version, origin))
    if state.misses.read_back is not None:
        state.misses.ask(b"", 0, key)  # nobody waits on it: the answer is the relay


def _raise_floor(state: HubState, key: str, version: int, origin: int) -> None:
    floors = state.remote_floor
    floors.pop(key, None)  # to the end: the oldest floors go first
    floors[key] = (version, origin, False)
    if len(floors) > FLOOR_KEYS:
        del floors[next(iter(floors))]


def drop_partitions(state: HubState, partitions: int) -> list[list[bytes]]:
    """Changes elsewhere to sessions in ``partitions`` were missed and can't be named: drop every live copy there.

    Tombstones stay (they beat any live write). A DROP on the hub's stream
    makes every worker forget its copies in those partitions too, those this
    hub no longer holds included; each is read from the store when next used.
    The other partitions keep their copies. Counted as ``remote_invalidated``.
    """
    state.holds_all = False
    live = [key for key, record in state.replica.items() if not record.deleted and covers(partitions, key)]
    for key in live:
        _forget(state, key)
    state.counts["remote_invalidated"] += len(live)
    state.seq += 1
    state.counts["relayed"] += 1
    return [wire.encode_drop(partitions, state.hub_id, state.epoch, state.seq, state._now_us())]


def invalidate_all(state: HubState) -> list[list[bytes]]:
    """Changes elsewhere were missed and can't be named at all: ``drop_partitions`` of every partition."""
    return drop_partitions(state, ALL)


def suspect_all(state: HubState) -> list[list[bytes]]:
    """The feed of other hosts' changes is silent: no copy here is vouched for until ``trust_again``.

    Returns a hub beat saying so, sent at once (the workers check their hits from then on).
    """
    state.holds_all = False
    state.suspect = ALL
    return [state.heartbeat()]


def trust_again(state: HubState) -> list[list[bytes]]:
    """The feed read the log to its end again (its changes were applied before this): copies are vouched for."""
    state.suspect = 0
    return [state.heartbeat()]


def _drop_unless_reflected(state: HubState, change: RemoteChange) -> bool:
    """Forget the hub's live copy of ``change.key`` unless it reflects the change; True if forgotten."""
    held = state.replica.get(change.key)
    if held is None or held.deleted or reflects(held, change.version, change.origin):
        return False  # a tombstone stays: it beats the live write wherever they meet
    _forget(state, change.key)
    return True


def _forget(state: HubState, key: str) -> None:
    """Drop the hub's copy of ``key`` (its expiry entry lapses on its own: prune checks the replica)."""
    del state.replica[key]
    state._recency.release(key)


def _invalidate_frames(state: HubState, key: str, version: int, origin: int) -> list[bytes]:
    """An INVALIDATE on the hub's own stream: each worker drops its copy unless it reflects the change."""
    state.seq += 1
    state.counts["relayed"] += 1
    fields = [key, version, origin, False]
    return wire.encode_message(wire.INVALIDATE, state.hub_id, state.epoch, state.seq, state._now_us(), fields)
