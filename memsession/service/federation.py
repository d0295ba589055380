"""Hosts joined through the store they share: each host's sidecar follows what the others wrote.

Inside a host nothing changes: its workers and its sidecar share sessions
over ipc. Between hosts nothing but the store is shared. Every host's
sidecar logs what it writes in the save's own transaction (PostgreSQL:
``PostgresStore(change_log=True, host=...)``) and follows the other hosts'
log through a ``persist.feed.ChangeFeed``. A change carries no data, only
what changed (key, version, origin, tombstone, clear watermark); this
module hands each batch to the hub thread, which applies it
(``memsession.hub.remote``): tombstones and clears are merged and relayed,
a live change drops every copy on this host that does not reflect it, and
the next read there is read through from the store.

A gap in another host's numbering (the log was pruned past where this
feed stood, a row went missing) names no session: every live copy the hub
holds is dropped and invalidated on the workers, and is read again from
the store when next used.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..hub.inbox import Inbox
from ..hub.remote import RemoteChange, apply_remote, invalidate_all

if TYPE_CHECKING:
    from persist.feed import ChangeFeed

    from ..hub.runner import HubTask

__all__ = ["Federation"]

log = logging.getLogger("memsession.sidecar")


class Federation:
    """A change feed of the other hosts, handed to this host's hub thread through ``inbox``."""

    def __init__(self, feed: ChangeFeed, *, tombstone_ttl: float) -> None:
        self.feed = feed
        self.tombstone_ttl = tombstone_ttl
        self.inbox: Inbox[HubTask] = Inbox()
        self._stopping = threading.Event()
        #: ``overflows``: seconds the feed waited for the hub thread to catch up.
        self.counts = dict.fromkeys(("batches", "changes", "gaps", "overflows"), 0)

    def start(self) -> None:
        """Open the inbox and start following (raises the feed's ``StoreError`` if it can't)."""
        self.inbox.open()
        self.feed.start(self._changes, self._gap)

    def stop(self) -> None:
        self._stopping.set()  # a hand-over waiting for a hub thread that has stopped gives up
        self.feed.stop()
        self.inbox.close()

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "feed": self.feed.stats(), "positions": len(self.feed.positions())}

    def _changes(self, changes: Sequence[RemoteChange]) -> None:
        batch = list(changes)
        self.counts["batches"] += 1
        self.counts["changes"] += len(batch)
        ttl = self.tombstone_ttl
        self._hand_over(lambda state: apply_remote(state, batch, ttl))

    def _gap(self, host: str, expected: int, got: int) -> None:
        self.counts["gaps"] += 1
        log.warning("changes of host %s were missed (seq %d to %d); every session held here is read "
                    "from the store again", host, expected, got - 1)
        self._hand_over(invalidate_all)

    def _hand_over(self, task: HubTask) -> None:
        """Queue ``task`` for the hub thread, waiting while it is behind (the feed reads on once it is in)."""
        while not self.inbox.put([task], timeout=1.0):
            if self._stopping.is_set():
                return
            self.counts["overflows"] += 1
            log.warning("the hub is more than %d batches of other hosts' changes behind; waiting",
                        self.inbox.limit)
