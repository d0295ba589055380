"""CouchChangeFeed: which sessions changed in a CouchStore's database, from its ``_changes`` feed.

``persist.feed``'s ``ChangeFeed`` for CouchDB, read by ``persist.couchdb.changes``
(the loop ``CouchFollower`` uses too). Each line of the feed becomes changes,
never data (``doc_changes``): a session document becomes one ``Change`` per
writer it reflects (its ``seen``), its newest write last, so a copy that
misses any of them is dropped; our tombstone one tombstone change; a rise of
the clear watermark document one clear. Documents deleted at the CouchDB
level (a purge of expired sessions, a clear's sweep) and documents outside
the prefix are skipped: their end is known already, through the expiry or
the clear. Every change is checked (``persist.feed.change_fault``); one that
breaks the rule is skipped, counted as ``refused`` and logged without its key
(``memsession.refusals``).

CouchDB names no host in its changes, and a document names the writers
(origins) it reflects, not their host. So the changes are numbered by the
feed itself, under one name (``FEED_HOST``: seq 1, 2, 3, ...), and this
host's own writes are handed over too. That costs an INVALIDATE per write
that every copy here already reflects, and is needed: the feed has only each
document's latest revision, so the one this host wrote may hold another
host's write it merged over (``merge_row``), which no other line will show.

``positions()`` is ``{FEED_HOST: last seq numbered, SINCE: the since the
feed stands at}``, the since as text: a feed made with them follows from
there. Where it can't, it reports a gap (``on_gap(FEED_HOST, n, n + 1, None)``:
the numbering skips ``n``, standing for the changes missed, in partitions it
can't name) and follows from the database's end as it read it before the gap
was reported:

* positions without a since (a file a PostgreSQL feed kept);
* a since ahead of the database's end (``since_lost``: the database was made
  anew; PouchDB follows from such a since, or from one it can't read,
  without a word);
* a since the server answers ``400`` to.

A false alarm (a cluster node behind the one the since came from) costs a
read of every session from the store again, never a change.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from memsession.clock import SYSTEM_CLOCK, Clock
from memsession.errors import ConfigError, RecordRefused, StoreError
from memsession.record_shape import stamps_fault
from memsession.refusals import log_refusal

from ..base import WATERMARK_KEY
from ..feed import Change, change_fault, position_fault
from ..jsonstamps import seen_from_json
from .changes import ChangesReader, Seq, check_reader_options, seq_fault
from .database import NAME
from .store import CouchStore

__all__ = ["FEED_HOST", "SINCE", "CouchChangeFeed", "doc_changes", "seq_number", "since_lost"]

log = logging.getLogger("memsession.persist")

#: The name the feed numbers its changes under (CouchDB does not say which host wrote one).
FEED_HOST = "couchdb"
#: The positions' entry that keeps the since the feed stands at.
SINCE = "couchdb:since"
_COUNTERS = ("changes", "clears", "gaps", "refused", "skipped", "errors", "callback_errors", "reconnects")
#: A session document's version or origin: a 64-bit int in decimal, one spelling per number.
_DECIMAL = re.compile(r"0|-?[1-9][0-9]{0,19}")
#: The number a sequence starts with: PouchDB's whole int, CouchDB's ``N-<opaque>``.
_SEQ_NUMBER = re.compile(r"([0-9]{1,20})(?:-|$)")
OnChanges = Callable[[list[Change]], Any]
OnGap = Callable[[str, int, int, int | None], Any]


def doc_changes(doc: Any) -> tuple[bool, list[tuple[int, int]]]:
    """Whether a session document is our tombstone, and the writes it reflects as ``(version, origin)``.

    A tombstone's is its own alone (it beats everything); a live document's
    is every writer of its ``seen``, its own newest write last. Raises
    ``RecordRefused`` saying what is wrong (never the id).
    """
    if not isinstance(doc, dict):
        raise RecordRefused("the change carries no document")
    version, origin, deleted = doc.get("version"), doc.get("origin"), doc.get("deleted", False)
    if type(version) is not str or type(origin) is not str or not (
        _DECIMAL.fullmatch(version) and _DECIMAL.fullmatch(origin)
    ):
        raise RecordRefused("version and origin are not decimal strings")
    if type(deleted) is not bool:
        raise RecordRefused("deleted is not a bool")
    own = (int(version), int(origin))
    if deleted:
        return True, [own]
    seen = seen_from_json(doc.get("seen"))
    fault = stamps_fault(None, None, seen, own[0], False)
    if fault is not None:
        raise RecordRefused(fault)
    if seen is None:
        return False, [own]
    return False, [(v, o) for o, v in seen.items() if (v, o) != own] + [own]


def seq_number(seq: Seq) -> int | None:
    """The count a sequence starts with, to compare two of one database; None: it has none."""
    if type(seq) is int:
        return seq
    match = _SEQ_NUMBER.match(str(seq))
    return int(match.group(1)) if match else None


def since_lost(since: Seq, end: Seq) -> bool:
    """Whether ``since`` can't be a place in the database whose end is ``end``: ahead of it, or no count."""
    at, last = seq_number(since), seq_number(end)
    return last is not None and (at is None or at > last)


def _checked_positions(positions: Mapping[str, Any] | None) -> tuple[int, str | None]:
    """The seq numbered and the since kept in ``positions`` (None: no since to follow from)."""
    if positions is None:
        return 0, None
    if not isinstance(positions, Mapping) or any(position_fault(k, v) for k, v in positions.items()):
        raise ConfigError("positions", positions, "must map names to ints >= 0 or cursors (persist.feed)")
    seq, since = positions.get(FEED_HOST, 0), positions.get(SINCE)
    if type(seq) is not int or not (since is None or type(since) is str):
        raise ConfigError("positions", positions, f"{FEED_HOST!r} must be an int and {SINCE!r} a str")
    return seq, since


class CouchChangeFeed:
    """Follows a ``CouchStore``'s ``_changes`` feed: ``persist.feed``'s ``ChangeFeed`` (see the module).

    By default the feed starts at the database's end as ``start()`` finds
    it; ``positions`` (from ``positions()`` of an earlier feed) resumes where
    that one stood. ``heartbeat`` (seconds) is the feed's heartbeat, which
    also bounds how long ``stop()`` takes; the other options are
    ``persist.couchdb.changes``'s.
    """

    def __init__(
        self,
        store: CouchStore,
        *,
        positions: Mapping[str, Any] | None = None,
        heartbeat: float = 1.0,
        retry_min: float = 0.1,
        retry_max: float = 5.0,
        max_line_bytes: int = 8 << 20,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(store, CouchStore):
            raise ConfigError("store", store, "must be a CouchStore")
        self.store = store
        self._seq, self._since = _checked_positions(positions)
        #: Positions without a since: where the feed stood is unknown, a gap to report at the first connect.
        self._lost = positions is not None and self._since is None
        self._watermark = 0
        self.heartbeat = heartbeat
        self.clock = clock
        #: When the database's end was last read and its count, till the feed gets past it (``_passing``).
        self._probe: tuple[float, int] | None = None
        #: When the end last read was, once the feed got past it.
        self._passed: float | None = None
        #: When lines last came (``caught_up_at``).
        self._read_at: float | None = None
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._lock = threading.Lock()
        self._reader_options: dict[str, Any] = {
            "heartbeat": heartbeat, "retry_min": retry_min, "retry_max": retry_max,
            "max_line_bytes": max_line_bytes, "clock": clock,
        }
        check_reader_options(heartbeat, retry_min, retry_max, max_line_bytes)
        self._reader: ChangesReader | None = None
        self._on_changes: OnChanges = lambda changes: None
        self._on_gap: OnGap = lambda host, expected, got, partitions: None

    def __repr__(self) -> str:
        return f"CouchChangeFeed({self.store.url!r})"

    # -- the ChangeFeed protocol ----------------------------------------------------

    def start(self, on_changes: OnChanges, on_gap: OnGap) -> None:
        """Read the database's end, then follow in a thread; raise (``StoreError``) if it can't be read.

        When it returns, the feed stands at a since: every change from then
        on will be handed over.
        """
        if self._reader is not None:
            raise RuntimeError("the change feed is already running")
        self._on_changes, self._on_gap = on_changes, on_gap
        self._probe = self._passed = self._read_at = None
        end = self._end()
        with self._lock:
            if self._since is None:
                self._since = str(end)
            since = self._since
        self._reader = ChangesReader(
            self.store, self._lines, since=since, counts=self._counts, on_connect=self._connected,
            on_refused=self._refused, name="memsession-couch-feed", **self._reader_options,
        )
        self._reader.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop following; returns within about ``heartbeat`` seconds. Idempotent."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.stop(timeout)

    def positions(self) -> dict[str, Any]:
        with self._lock:
            if self._since is None:
                return {FEED_HOST: self._seq}
            return {FEED_HOST: self._seq, SINCE: self._since}

    def caught_up_at(self) -> float | None:
        """When (``clock.monotonic``) the feed last heard from the database: a line, a heartbeat, or
        (changes coming too fast for a heartbeat) the database's end reached (``_passing``)."""
        reader = self._reader
        if reader is None:
            return None
        times = [t for t in (reader.idle_at, self._passed, self._read_at) if t is not None]
        return max(times) if times else None

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._counts, "seq": self._seq}

    # -- the thread -----------------------------------------------------------------

    def _end(self) -> Seq:
        """The database's last sequence (``update_seq``)."""
        _, info = self.store._request("changes", "GET", "")
        end = info.get("update_seq") if isinstance(info, dict) else None
        fault = seq_fault(end)
        if fault is not None:
            raise StoreError(f"CouchDB database info: {fault}", store=NAME, op="changes")
        assert isinstance(end, (str, int))
        return end

    def _connected(self) -> None:
        """Before each connect: a since the database can't have given is a gap."""
        end = self._end()
        with self._lock:
            since, lost = self._since, self._lost
        if lost:
            self._gap("where the feed stood was not kept", end)
        elif since is not None and since_lost(since, end):
            self._gap("the since is ahead of the database's end (was it made anew?)", end)

    def _refused(self) -> Seq:
        end = self._end()
        self._gap("the server refused the since", end)
        return end

    def _gap(self, reason: str, end: Seq) -> None:
        """Report changes missed that can't be named, then stand at ``end`` (read before this)."""
        with self._lock:
            self._seq += 1
            skipped = self._seq
            self._since, self._lost = str(end), False
            self._counts["gaps"] += 1
        if self._reader is not None:
            self._reader.since = end
        log.warning("the CouchDB change feed missed changes it can't name (%s); going on from the end",
                    reason)
        self._call(self._on_gap, FEED_HOST, skipped, skipped + 1, None)

    def _lines(self, lines: list[dict[str, Any]], since: Seq) -> None:
        """Check and number the changes the lines hold, stand past them, then hand them over."""
        self._read_at = self.clock.monotonic()  # the feed reads: late perhaps, not silent
        changes: list[Change] = []
        with self._lock:
            seq = self._seq
        for line in lines:
            for key, version, origin, deleted, cleared in self._read(line):
                seq += 1
                fault = change_fault(key, version, origin, deleted, cleared, FEED_HOST, seq)
                if fault is not None:
                    seq -= 1
                    self._refuse(fault)
                    continue
                changes.append(Change(key, version, origin, deleted, cleared, FEED_HOST, seq))
        with self._lock:
            self._seq, self._since = seq, str(since)
            self._counts["changes"] += len(changes)
            self._counts["clears"] += sum(1 for change in changes if change.is_clear)
        if changes:
            self._call(self._on_changes, changes)
        self._passing(since)

    def _passing(self, since: Seq) -> None:
        """Handed over up to ``since`` without a heartbeat: got past the end last read? time to read it?"""
        probe, now = self._probe, self.clock.monotonic()
        at = seq_number(since)
        if probe is not None and at is not None and at >= probe[1]:
            self._passed, self._probe = probe[0], None
        caught = self.caught_up_at()
        if self._probe is not None or (caught is not None and now - caught < self.heartbeat):
            return
        try:
            end = seq_number(self._end())
        except StoreError as exc:
            self._count("errors")
            log.debug("reading the CouchDB database's end failed (%s); the feed goes on", exc)
            return
        if end is not None and at is not None and at >= end:
            self._passed = now
        elif end is not None:
            self._probe = (now, end)

    def _read(self, line: dict[str, Any]) -> list[tuple[str, int, int, bool, int]]:
        """A line's changes as ``(key, version, origin, deleted, cleared)``, unchecked; none to skip it."""
        doc_id, doc = line.get("id"), line.get("doc")
        if line.get("deleted") is True or type(doc_id) is not str:
            self._count("skipped")
            return []
        if doc_id == WATERMARK_KEY:
            try:
                watermark = self.store._watermark_of(doc, "changes")
            except StoreError as exc:
                self._refuse(str(exc))
                return []
            if watermark <= self._watermark:
                return []  # swept, or a repeat: the clear was handed over when the watermark rose
            self._watermark = watermark
            return [("", 0, 0, False, watermark)]
        prefix = self.store.prefix
        if not doc_id.startswith(prefix):
            self._count("skipped")
            return []
        try:
            deleted, writes = doc_changes(doc)
        except RecordRefused as exc:
            self._refuse(str(exc))
            return []
        key = doc_id[len(prefix) :]
        return [(key, version, origin, deleted, 0) for version, origin in writes]

    def _refuse(self, fault: str) -> None:
        with self._lock:
            self._counts["refused"] += 1
            refused = self._counts["refused"]
        # A flood of bad documents costs a handful of warnings; the fault never quotes the id.
        log_refusal(log, "the CouchDB change feed skipped a change", refused, fault)

    def _call(self, callback: Callable[..., Any], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            self._count("callback_errors")
            log.exception("a change feed callback failed; going on")

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1
