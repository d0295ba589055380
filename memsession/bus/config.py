"""Options of a bus client: the hub's endpoints, the replication mode, timings and queue sizes.

``BusConfig`` is frozen and checked at construction, so a bad option fails
when the bus is configured, not at its first message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import wire
from ..errors import ConfigError
from ..validate import check_choice, check_int, check_number
from .sequence import DEFAULT_JUMP_HOLD, DEFAULT_MAX_JUMP

if TYPE_CHECKING:
    from ..hub.runtime_dir import HubAddresses

__all__ = ["MODES", "BusConfig"]

#: What ``BusConfig.mode`` may be (see its field).
MODES = ("update", "invalidate")


@dataclass(frozen=True, slots=True, kw_only=True)
class BusConfig:
    """Options of a bus client. Endpoints are the hub's (see ``HubConfig``)."""

    #: Where publishers connect (the hub's XSUB).
    publish: str = ""
    #: Where subscribers connect (the hub's XPUB).
    subscribe: str = ""
    #: The hub's ROUTER (snapshots, key reads, pushes).
    requests: str = ""
    #: ``update``: values travel; ``invalidate``: only key and version travel.
    mode: str = "update"
    #: A miss asks the hub, which reads the store (always so in ``invalidate`` mode): for a hub whose
    #: store other hosts write too (``memsession sidecar --host-name``), a session this host never held.
    read_through: bool = False
    #: Seconds between heartbeats; gaps are found at the next message or beat.
    heartbeat: float = 1.0
    #: No hub heartbeat for this long counts as an outage: repair when it returns.
    silence: float = 3.5
    #: Seconds to wait for a snapshot or a key read.
    request_timeout: float = 2.0
    #: Local changes waiting to be sent; beyond this they are dropped and counted.
    queue_size: int = 100_000
    #: ZeroMQ high-water marks (messages) on our PUB and SUB.
    sndhwm: int = 100_000
    rcvhwm: int = 100_000
    #: Directory with ``client.key_secret`` and ``server.key`` for CURVE on tcp.
    keys: str | None = None
    #: Allow tcp without CURVE (logs a warning).
    insecure: bool = False
    #: Publishers not heard for this long (seconds) are forgotten: what they wrote stays merged, their
    #: stream bookkeeping goes, so state and snapshots follow the live processes, not every one that lived.
    forget_after: float = 60.0
    #: How long ``close()`` waits for a hub when it is away (a sidecar restart) and this process
    #: published changes: what it wrote meanwhile may exist nowhere else until a hub takes it.
    close_timeout: float = 5.0
    #: How far (in sequence numbers) a message or heartbeat may run ahead of the last one seen from its
    #: stream and still count as a gap. Only lost messages make a stream jump, so this bounds what one
    #: frame can claim: a jump past it is kept out, counted (``dropped["seq jump"]``) and repaired, and
    #: believed only after ``seq_jump_hold`` seconds with no frame of that stream within the bound.
    max_seq_jump: int = DEFAULT_MAX_JUMP
    #: Seconds a jump past ``max_seq_jump`` must stand before it is believed; must exceed the
    #: heartbeat of every publisher (each heartbeat carries its stream's real last number).
    seq_jump_hold: float = DEFAULT_JUMP_HOLD
    #: Fault injection for tests: fraction of data messages dropped after numbering
    #: (changes then travel one a message, unbatched, so each can be lost on its own).
    fault_drop_rate: float = 0.0
    limits: wire.Limits = wire.DEFAULT_LIMITS

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_number("heartbeat", self.heartbeat)
        check_number("silence", self.silence)
        check_number("request_timeout", self.request_timeout)
        check_number("close_timeout", self.close_timeout, allow_zero=True)
        check_number("forget_after", self.forget_after)
        if self.forget_after <= self.silence:
            raise ConfigError("forget_after", self.forget_after, "must exceed silence")
        if self.silence <= self.heartbeat:
            raise ConfigError("silence", self.silence, "must exceed heartbeat")
        check_number("seq_jump_hold", self.seq_jump_hold)
        if self.seq_jump_hold <= self.heartbeat:
            raise ConfigError("seq_jump_hold", self.seq_jump_hold, "must exceed heartbeat")
        for name in ("queue_size", "sndhwm", "rcvhwm", "max_seq_jump"):
            check_int(name, getattr(self, name))
        if not 0.0 <= self.fault_drop_rate < 1.0:
            raise ConfigError("fault_drop_rate", self.fault_drop_rate, "must be in [0, 1)")

    def addresses(self) -> HubAddresses:
        """What the sockets connect to: ipc endpoints inside their directory, checked now and held.

        A directory that fails its checks (``hub.runtime_dir``) fails here, where the bus is made.
        """
        from ..hub.runtime_dir import HubAddresses

        return HubAddresses(self.publish, self.subscribe, self.requests)
