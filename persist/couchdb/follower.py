"""CouchFollower: a CouchStore's ``_changes`` feed, handed record by record to a local cache.

Every other host's write to the database reaches this process's memory
(``on_record=cache.apply``), and a clear any host made reaches ``on_clear``.
The feed is read by ``persist.couchdb.changes`` (CouchDB's continuous one
with heartbeats, line by line with a size limit per line); any failure is
logged and followed by a reconnect from the last sequence seen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from memsession.clock import SYSTEM_CLOCK, Clock
from memsession.errors import RecordRefused, StoreError
from memsession.session import Record

from ..base import WATERMARK_KEY, after_clear
from .changes import ChangesReader
from .store import CouchStore

__all__ = ["CouchFollower"]

log = logging.getLogger("memsession.persist")

#: Version of the tombstones ``CouchFollower`` hands over for documents gone from CouchDB:
#: below every real write (versions start above 0), so they never outrank a real tombstone.
_EVICTION_VERSION = 0


class CouchFollower:
    """Follows a CouchStore's ``_changes`` feed and hands every change to ``on_record``.

    The PouchDB session store's realtime synchronisation: run one per
    process with ``on_record=cache.apply`` and sessions written by other
    hosts reach this one's memory. Uses the continuous feed with heartbeats
    (``heartbeat`` seconds); on any error it logs, waits (``retry_min`` up
    to ``retry_max``) and reconnects from the last sequence it saw
    (``since``, also readable while running). Starts at ``since="now"``:
    what was written before is read through on demand.

    Our tombstones (documents with ``"deleted": true``) are handed over
    like any session, whatever their version: a cache takes them below its
    clear watermark too. A change whose document was deleted at the CouchDB
    level (purged, ``delete()``d, or a live session a clear swept) is handed
    over as a tombstone that expires at once, so the session is evicted here
    without blocking its id. Its ``(version, origin)`` is ``(0, 0)``, below
    every real write: it removes any live copy (a tombstone beats every live
    version) but never replaces a tombstone the cache holds, so a destroy the
    cache kept through a clear keeps blocking a late live write. The clear
    watermark's document is never handed over as a session: a watermark
    that rose (in the feed, or read at each connect: clears made while not
    following count too) goes once to ``on_clear`` (e.g. the cache's
    ``apply_clear``), if given, as an int, and to ``watermark``; a live
    document at or below it is not handed over, and a newer one without the
    keys it covers (``persist.base.after_clear``). Every record handed over
    carries its per-key stamps and the writers it reflects (``seen``), as
    stored, for the cache to merge key by key. A document the record rule
    refuses (``memsession.admission``) is skipped and counted as
    ``refused``; ``on_record=cache.apply`` applies the cache's own rules on
    top. An exception from a callback is logged and counted; the follower
    goes on.
    """

    def __init__(
        self,
        store: CouchStore,
        on_record: Callable[[Record], Any],
        *,
        on_clear: Callable[[int], Any] | None = None,
        since: str | int = "now",
        heartbeat: float = 1.0,
        retry_min: float = 0.1,
        retry_max: float = 5.0,
        max_line_bytes: int = 8 << 20,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.store = store
        self.on_record = on_record
        self.on_clear = on_clear
        #: The highest clear watermark seen (0: never cleared).
        self.watermark = 0
        self.clock = clock
        self.counts = dict.fromkeys(
            ("changes", "records", "deletions", "clears", "errors", "reconnects", "skipped", "refused"), 0
        )
        self._reader = ChangesReader(
            store,
            self._lines,
            since=since,
            counts=self.counts,
            heartbeat=heartbeat,
            retry_min=retry_min,
            retry_max=retry_max,
            max_line_bytes=max_line_bytes,
            # Clears made while the feed was not followed (before ``since``) count too.
            on_connect=lambda: self._see_watermark(store._watermark("changes")),
            clock=clock,
        )
        self.heartbeat = heartbeat
        self.connected = self._reader.connected

    @property
    def since(self) -> str | int:
        """The last sequence seen: where a reconnect (or a follower made with it) goes on from."""
        return self._reader.since

    @since.setter
    def since(self, value: str | int) -> None:
        self._reader.since = value

    def start(self) -> CouchFollower:
        self._reader.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop following; returns within about ``heartbeat`` seconds. Idempotent."""
        self._reader.stop(timeout)

    def __enter__(self) -> CouchFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _lines(self, changes: list[dict[str, Any]], since: str | int) -> None:
        for change in changes:
            self._handle(change)

    def _handle(self, change: dict[str, Any]) -> None:
        """Apply one change of the feed."""
        doc_id = change.get("id", "")
        self.counts["changes"] += 1
        if doc_id == WATERMARK_KEY and not change.get("deleted"):
            try:
                self._see_watermark(self.store._watermark_of(change.get("doc"), "changes"))
            except StoreError:
                self.counts["errors"] += 1
                log.exception("an unreadable clear watermark in the CouchDB feed; going on")
            return
        if not isinstance(doc_id, str) or not doc_id.startswith(self.store.prefix):
            self.counts["skipped"] += 1
            return
        try:
            if change.get("deleted"):
                now = self.clock.wall()
                key = doc_id[len(self.store.prefix) :]
                self.on_record(Record(key, {}, _EVICTION_VERSION, 0, now, now, now, True))
                self.counts["deletions"] += 1
            else:
                try:
                    record = self.store._record(change.get("doc"))
                except RecordRefused as exc:
                    # Skipped and counted (store and feed), logged without its id: the feed goes on.
                    self.counts["refused"] += 1
                    self.store.refused.skip(exc)
                    return
                kept = after_clear(record, self.watermark)
                if kept is None:
                    self.counts["skipped"] += 1  # a late write the clear covers: stores ignore it too
                else:
                    self.on_record(kept)
                    self.counts["records"] += 1
        except Exception:
            self.counts["errors"] += 1
            log.exception("applying a CouchDB change failed; going on")

    def _see_watermark(self, version: int) -> None:
        """A clear watermark read from the feed or at connect: hand it on once, when it rises.

        The watermark document changes twice per clear (raised, then swept);
        only the rise is a new clear.
        """
        if version <= self.watermark:
            return
        self.watermark = version
        self.counts["clears"] += 1
        if self.on_clear is None:
            return
        try:
            self.on_clear(version)
        except Exception:
            self.counts["errors"] += 1
            log.exception("applying a CouchDB clear failed; going on")
