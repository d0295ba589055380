"""When a copy held here is checked with the hub before it is served, and what no answer means.

Two cases, one path (``_checked_hit``, asked by every read: ``get``,
``checked_record``, ``wait_for``):

* **A repair** (the bus lost messages; ``begin_repair`` to ``end_repair``):
  the hub has what was lost, so each key is checked with it once. A hub that
  does not answer leaves the local copies served, counted ``unverified``
  (logged once per repair): only this host's processes write them, and the
  repair completes them.
* **Partitions the hub can't vouch for** (``suspect``, from its beats: the
  sidecar's feed of other hosts' changes is silent, ``hub.remote``): another
  host may change or end any of those sessions at any moment, so every hit
  there is checked, each time, with the hub, which reads the store. No answer
  refuses the read (``SessionUnavailable``, a 503): the copy could be one
  another host has ended. An answer of "no such session" leaves the copy
  served: neither the sidecar nor the store has it yet, so it is this host's
  own newest write, on its way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import SessionUnavailable
from .partitions import covers
from .session import Record

if TYPE_CHECKING:
    from .bus.base import Bus
    from .clock import Clock
    from .holdings import Holdings

__all__ = ["HitChecks"]

log = logging.getLogger("memsession")

#: How long a read waits for the hub while a gap is repaired (the hub is up; a GET takes well under 1 ms).
REVALIDATE_TIMEOUT = 0.25
#: How long a hit in a suspect partition waits for the hub's store read before it is refused.
VOUCH_TIMEOUT = 1.0


class HitChecks:
    """The checks of ``Replica``'s hits (a mixin: ``Replica`` provides the lock, the holdings and the bus)."""

    _lock: threading.Lock
    _held: Holdings
    _counts: dict[str, Any]
    bus: Bus | None
    clock: Clock
    #: ``Replica.apply``: merge a record that came from elsewhere.
    apply: Callable[[Record], bool]

    def _init_checks(self) -> None:
        #: Set while the bus repairs a gap: a hit is checked with the hub before it is served.
        self._repairing = False
        self._verified: set[str] = set()
        self._hub_unreachable = False
        #: Partitions the hub can't vouch for now (``memsession.partitions`` mask; 0: none).
        self._suspect = 0
        self._vouch_failed = False

    def begin_repair(self) -> None:
        """The bus lost messages: check each entry with the hub before serving it, until ``end_repair``."""
        with self._lock:
            self._verified = set()
            self._hub_unreachable = False
            self._repairing = True

    def end_repair(self) -> None:
        """The bus spliced in a snapshot: what is held here is as fresh as the hub's."""
        with self._lock:
            self._repairing = False
            self._verified = set()

    def suspect(self, mask: int) -> None:
        """The hub can't vouch for these partitions' copies (its beat says so): check every hit there."""
        with self._lock:
            if mask and not self._suspect:
                self._vouch_failed = False
            self._suspect = mask

    def _checked_hit(self, sid: str, key: str, record: Record) -> Record | None:
        """``record`` (live, held here) as it may be served: checked with the hub if it must be; None if gone.

        Raises ``SessionUnavailable`` for a hit the hub can't vouch for and did not answer for.
        """
        if self._suspect and covers(self._suspect, key):
            return self._vouched(sid, key, record)
        if self._repairing and key not in self._verified:
            return self._revalidate(key, record)
        return record

    def _vouched(self, sid: str, key: str, record: Record) -> Record | None:
        bus = self.bus
        started = time.monotonic()
        answered, fetched = bus.lookup(key, timeout=VOUCH_TIMEOUT) if bus is not None else (False, None)
        if not answered:
            with self._lock:
                self._counts["unavailable"] += 1
                first, self._vouch_failed = not self._vouch_failed, True
            if first:
                log.warning("the sidecar can't vouch for sessions held here (it can't follow the other hosts' "
                            "changes) and did not answer a check; such reads are refused until it does")
            raise SessionUnavailable(sid, time.monotonic() - started)
        return self._merged(key, fetched)

    def _revalidate(self, key: str, record: Record) -> Record | None:
        """During a gap repair: bring ``key`` up to the hub's copy before serving it.

        The lost messages may have changed or ended this session. If the hub
        does not answer, the local copy is served and counted as
        ``unverified`` (logged once per repair); later reads in the same
        repair don't wait again.
        """
        bus = self.bus
        if bus is None or self._hub_unreachable:
            self._counts["unverified"] += 1
            return record
        answered, fetched = bus.lookup(key, timeout=REVALIDATE_TIMEOUT)
        if not answered:
            with self._lock:
                if not self._hub_unreachable:
                    self._hub_unreachable = True
                    log.warning("hub did not answer a revalidation during a repair; serving local copies")
                self._counts["unverified"] += 1
            return record
        with self._lock:
            self._verified.add(key)
        return self._merged(key, fetched)

    def _merged(self, key: str, fetched: Record | None) -> Record | None:
        """Merge the hub's answer for ``key`` (counted ``revalidated``); the live record held afterwards, or None."""
        if fetched is not None:
            self.apply(fetched)
        with self._lock:
            self._counts["revalidated"] += 1
            current: Record | None = self._held.core.lookup(key, self.clock.monotonic())
        return current if current is not None and not current.deleted else None
