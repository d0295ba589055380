"""Misses of a bounded replica that its store may answer: reads waiting for a read-back, touches held back.

Once the hub's replica has evicted a session (or a warm start left some in
the store), a key it does not hold may still be a live session; and a key it
holds only as a delta (a partial record) is a session the store may hold the
rest of. A hub with a store (the sidecar) hands such a GET to ``read_back``
and answers it once the store was read; a touch of a key it does not hold is
held here and applied to the copy read back (dropping it would let the
store's copy lapse while the session is in use). No I/O here: ``read_back``
queues the read, the runner brings the result back to the hub thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..refusals import log_refusal

__all__ = ["ReadBack", "StoreMisses"]

log = logging.getLogger("memsession.hub")

#: ``read_back(sender, rid, key)``: read ``key`` from the store for the requester ``sender`` (b"": no
#: one waits for a reply); False if it can't be queued now.
ReadBack = Callable[[bytes, int, str], bool]


class StoreMisses:
    """The read-backs a hub asked for and the touches waiting for them; counts into ``counts``."""

    def __init__(self, read_back: ReadBack | None, counts: dict[str, int]) -> None:
        self.read_back = read_back
        self.counts = counts
        counts["read_backs"] = counts["read_back_refused"] = 0
        self._touches_due: dict[str, Any] = {}  # newest touch per key being read back

    def ask(self, sender: bytes, rid: int, key: str) -> bool:
        """Queue a store read of ``key`` for ``sender``; False (counted, logged) if the queue is full.

        A full queue leaves the GET unanswered rather than answered "no such
        session": the worker asks again, or reports the session unavailable.
        """
        assert self.read_back is not None
        if self.read_back(sender, rid, key):
            self.counts["read_backs"] += 1
            return True
        count = self.counts["read_back_refused"] = self.counts["read_back_refused"] + 1
        log_refusal(log, "hub left a read unanswered (the store read-back queue is full)", count, "")
        return False

    def hold_touch(self, key: str, body: Any) -> None:
        """Keep a touch of ``key`` until its copy is read back (asking for that read if none is under way)."""
        if key in self._touches_due or self.ask(b"", 0, key):
            self._touches_due[key] = body
        else:
            log.warning("a touch was dropped: the store read-back queue is full")

    def touch_due(self, key: str, ok: bool) -> Any | None:
        """The touch held for ``key`` now that it was read back (``ok``) or could not be (then it is dropped)."""
        touch = self._touches_due.pop(key, None)
        if touch is not None and not ok:
            log.warning("a touch was dropped: the store could not be read for its session")
            return None
        return touch
