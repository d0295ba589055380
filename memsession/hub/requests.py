"""The hub's answers to requests on its ROUTER: snapshot, key read, push, write and stats.

Kept apart from ``HubState`` (the replica and the bus protocol), which calls
these with itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .. import wire
from ..errors import WireError
from ..refusals import log_refusal

if TYPE_CHECKING:
    from .state import HubState

__all__ = ["CHUNK_RECORDS", "answer_request", "snapshot_frames"]

log = logging.getLogger("memsession.hub")

CHUNK_RECORDS = 1000  # records in one snapshot chunk


def snapshot_frames(state: HubState, rid: int) -> Iterator[list[bytes]]:
    """CHUNK frames then END, cut from the replica as it is now."""
    wall = state.clock.wall()
    vector = [[o, e, s] for o, (e, s) in state.tracker.vector().items()]
    vector.append([state.hub_id, state.epoch, state.seq])
    # Partial records as they are: a worker merges one only into a copy it holds.
    live = [r for r in state.replica.values() if r.expires > wall]
    state.counts["snapshots"] += 1
    chunks = 0
    for chunk in wire.record_lists(live, CHUNK_RECORDS, state.limits.max_stamps):
        chunks += 1
        yield wire.encode_request(wire.CHUNK, rid, chunk)
    yield wire.encode_request(wire.END, rid, state.epoch, vector, chunks, len(live), state.cleared)


def answer_request(
    state: HubState, frames: list[bytes], sender: bytes = b""
) -> tuple[list[list[bytes]], list[list[bytes]]]:
    """One request from ``sender``; returns ``(replies, frames to publish)``.

    A GET the store may have to answer or complete (``needs_read_back``) is answered once it was
    read (``answer_get``).
    """
    try:
        req = wire.decode_reply(frames, state.limits)
    except WireError as exc:
        state._drop("malformed request", exc)
        return [], []
    if req.refused:
        state.counts["refused"] += req.refused
        log_refusal(log, "hub refused records of a request", state.counts["refused"], f"{req.refused} in one")
    if req.op == wire.SNAPSHOT:
        return list(snapshot_frames(state, req.rid)), []
    if req.op == wire.GET:
        state.counts["gets"] += 1
        key = req.body[0]
        if sender and state.needs_read_back(key):
            state.misses.ask(sender, req.rid, key)
            return [], []
        return [state.answer_get(req.rid, key)], []
    if req.op == wire.PUSH:
        state.counts["pushes"] += 1
        relays = []
        records, cleared, stream = req.body
        if state.clear(cleared):
            # A clear this hub never saw (it restarted since): others may have missed it too.
            relays.append(state.relay_clear(cleared))
        for record in records:
            state.counts["pushed_records"] += 1
            if state.merge(record) and not _kept_out(state, record.key):
                relays.append(state.relay(record))
        if stream is not None:
            # The last request of a push: its origin's stream up to ``seq`` is in what came.
            origin, epoch, seq = stream
            state.tracker.heard(origin, state.clock.monotonic())
            state.tracker.pushed(origin, epoch, seq)
            state._resyncs.pushed(origin, epoch, seq)
        return [wire.encode_request(wire.ACK, req.rid, len(relays))], relays
    if req.op == wire.WRITE:
        state.counts["writes"] += 1
        changed = sum(1 for record in req.body[0] if state.merge(record))
        return [wire.encode_request(wire.ACK, req.rid, changed)], []
    if req.op == wire.STATS:
        return [wire.encode_request(wire.STATS_REPLY, req.rid, state.stats())], []
    state._drop("not a request", WireError(req.op))
    return [], []


def _kept_out(state: HubState, key: str) -> bool:
    """A pushed copy from before another host's change: dropped, to be read back (``remote.below_floor``)."""
    return key not in state.replica and state.remote_floor.get(key, (0, 0, False))[2]
