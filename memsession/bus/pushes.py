"""What a worker hands the hub beyond its numbered changes, when the hub may lack what it holds.

Two cases, one concern. A **push** hands a hub our whole state (after it
restarted, after a silence, or when it asks for a resync); every transport
builds its requests with ``push_fields``. A push names our stream's position
when it was taken, so the hub knows which of our numbered changes it holds
through the push: it neither takes them for a gap and asks for the same
state again, nor misses one we numbered afterwards and lost on the way (our
next heartbeat shows it). While the hub may lack changes made before ours,
a change travels as the **whole** session rather than a delta
(``sendable``).
"""

from __future__ import annotations

from typing import Any

from .. import wire
from ..session import Record
from .base import Replicator

__all__ = ["PUSH_RECORDS", "push_fields", "sendable"]

#: Records in one PUSH request (``wire.record_lists`` also bounds the stamps it carries).
PUSH_RECORDS = 1000


def push_fields(rep: Replicator) -> list[tuple[Any, ...]]:
    """The fields of each PUSH request that hands the hub our state: ``(records, cleared, stream)``.

    ``stream`` is ``[origin, epoch, seq]`` on the last request and None on the
    ones before (the hub takes our stream as covered once it has all of them).
    ``seq`` is read before the records are taken: a change is in the cache
    before it is numbered, so every change numbered up to ``seq`` is in them.
    One request even of nothing: it carries the clear watermark.
    """
    stream = [rep.origin, rep.epoch, rep.seq]
    cache = rep.cache
    records = cache.records()
    batches = list(wire.record_lists(records, PUSH_RECORDS, rep.config.limits.max_stamps)) or [[]]
    last = len(batches) - 1
    return [(batch, cache.cleared, stream if i == last else None) for i, batch in enumerate(batches)]


def sendable(rep: Replicator, record: Record, packed: bytes | None) -> tuple[Record, bytes | None]:
    """What goes on the bus for the local change ``record`` (``packed``: its data serialized).

    A delta (``partial``: only the keys a change set) is sent as it is,
    unless a receiver may lack changes made before it
    (``Replicator.others_may_lack``: the hub was away or restarted and is not
    repaired, or restarted moments ago and other workers' pushes may not be
    relayed yet). Then the whole session as held here travels: a copy lacking
    the delta's base would take its keys without naming its change
    (``changes.merge_records``), so reads there would ask the hub until a
    whole copy came; this completes them at once. Every key carries its own
    stamp, so the whole merges as the delta would.
    """
    if not record.partial or not rep.others_may_lack():
        return record, packed
    whole = rep.cache.held(record.key)
    if whole is None or whole.deleted or whole.partial:
        return record, packed  # ended or gone since: the delta is all there is to send
    rep.counts["sent_whole"] += 1
    return whole, None
