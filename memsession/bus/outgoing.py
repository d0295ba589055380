"""The sending half of replication: this process's numbered stream, without I/O.

``OutgoingStream`` names the stream (origin and a random epoch per start),
numbers the local changes 1, 2, 3... and encodes them, alone or as one BATCH,
with the heartbeats and hellos that carry the stream's last number. The
numbers are taken as the frames are made, so whoever sends them must send
them in that order and make them one thread at a time (``ZmqBus`` does both
under its send lock). ``Replicator`` (``base``) adds the receiving half.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from .. import wire
from ..clock import SYSTEM_CLOCK, Clock
from ..session import Record
from .config import BusConfig
from .contract import Clear, Outgoing
from .streams import is_touch, new_epoch

__all__ = ["OutgoingStream"]


class OutgoingStream:
    """Numbers and encodes this process's changes; ``counts["published"]`` counts them."""

    def __init__(self, origin: int, config: BusConfig, *, epoch: int | None = None,
                 clock: Clock = SYSTEM_CLOCK) -> None:
        self.origin = origin
        self.config = config
        self.clock = clock
        self.epoch = epoch if epoch is not None else new_epoch(clock)
        #: The number of the last change sent (0: none yet).
        self.seq = 0
        #: What this process's hellos carry: one coming back proves our subscription is live.
        self.nonce = secrets.randbits(62)
        self.counts: dict[str, int] = {"published": 0}

    def needs_write(self, record: Record) -> bool:
        """In ``invalidate`` mode a new value goes to the hub (WRITE) before its INVALIDATE."""
        return self.config.mode == "invalidate" and not record.deleted and not is_touch(record)

    def outgoing(self, record: Outgoing, *, full: bool = False) -> list[bytes]:
        """Frames for one local change, numbered next in our stream.

        ``full`` sends the value even in ``invalidate`` mode (the hub did not
        acknowledge the WRITE, so receivers must not be sent to read it there).
        """
        self.seq += 1
        op, fields = self._item(record, full)
        self.counts["published"] += 1
        return wire.encode_message(op, self.origin, self.epoch, self.seq, int(self.clock.wall() * 1_000_000), fields)

    def outgoing_batch(self, records: Sequence[Outgoing], *, full: bool = False) -> list[bytes]:
        """One BATCH message for several local changes (numbered consecutively), or a plain one for one."""
        if len(records) == 1:
            return self.outgoing(records[0], full=full)
        first = self.seq + 1
        self.seq += len(records)
        items = [self._item(r, full) for r in records]
        self.counts["published"] += len(records)
        return wire.encode_batch(items, self.origin, self.epoch, first, int(self.clock.wall() * 1_000_000))

    def _item(self, item: Outgoing, full: bool) -> tuple[str, list[Any]]:
        if isinstance(item, Clear):
            return wire.CLEAR, [item.version]
        packed: bytes | None = None
        if isinstance(item, tuple):  # (record, its data already packed)
            record, packed = item
        else:
            record = item
        if record.deleted:
            return wire.DESTROY, wire.destroy_fields(record)
        if is_touch(record):
            return wire.TOUCH, wire.touch_fields(record)
        if self.config.mode == "invalidate" and not full:
            return wire.INVALIDATE, wire.invalidate_fields(record)
        return wire.SET, wire.set_fields(record, packed)

    def heartbeat(self) -> list[bytes]:
        return wire.encode_heartbeat(self.origin, self.epoch, self.seq, int(self.clock.wall() * 1_000_000))

    def hello(self) -> list[bytes]:
        return wire.encode_hello(self.origin, self.epoch, self.nonce, int(self.clock.wall() * 1_000_000))
