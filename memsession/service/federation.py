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

Where the feed stood is kept durably (``positions_file``, in the sidecar's
runtime dir): a restarted sidecar resumes from the last batch its hub
applied, so the invalidations it missed while down still reach its workers
(whose copies outlived it). A file that can't be read is logged and every
copy is read again, as for a gap.

A feed that goes **silent** (no read has reached the end of the log for
``silence_after`` seconds: the database can't be reached, or the sidecar has
just started) can't say what the other hosts changed meanwhile, so the hub is
told to vouch for nothing (``remote.suspect_all``): its workers check every
hit with it and it answers from the store, or not at all, and then the read
is refused, never served a copy another host may have ended. Once a read
reaches the end of the log again (what it brought was applied first), the
copies are trusted again (``remote.trust_again``). A sidecar starts silent.

A gap in another host's numbering (the log was pruned past where this
feed stood, a row went missing) names no session: every live copy the hub
holds is dropped and invalidated on the workers, and is read again from
the store when next used.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from persist.feed import position_fault

from ..hub.inbox import Inbox
from ..hub.remote import apply_remote, drop_partitions, invalidate_all, suspect_all, trust_again
from ..partitions import ALL, PARTITIONS

if TYPE_CHECKING:
    from persist.feed import Change, ChangeFeed

    from ..hub.runner import HubTask

__all__ = ["DEFAULT_SILENCE", "POSITIONS_FILE", "Federation", "load_positions"]

log = logging.getLogger("memsession.sidecar")

#: The file in the runtime dir that keeps where the feed stood.
POSITIONS_FILE = "feed-positions.json"
#: Largest positions file read (a host name is at most 255 characters; thousands of hosts fit).
_MAX_FILE = 1 << 20
#: Seconds between two writes of the positions file.
_SAVE_EVERY = 1.0
#: Seconds without a read that reached the end of the log after which the feed counts as silent.
DEFAULT_SILENCE = 3.0
#: Seconds after a gap's drop that it is repeated: the pushes under way when it was made have landed.
DROP_AGAIN = 5.0


def load_positions(path: str) -> tuple[dict[str, Any] | None, bool]:
    """``(positions, ok)`` from ``path``: (None, True) if there is none yet, (None, False) if unreadable.

    Each entry is a host name and an int seq, or a store's cursor (text, ``persist.feed.position_fault``).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        return None, True
    except OSError as exc:
        log.warning("could not read the change feed's positions (%s): %s", path, exc)
        return None, False
    try:
        positions = json.loads(raw) if len(raw) <= _MAX_FILE else None
    except ValueError:
        positions = None
    if not isinstance(positions, dict) or any(position_fault(h, q) for h, q in positions.items()):
        log.warning("the change feed's positions file %s is not a map of host names to positions; ignored",
                    path)
        return None, False
    return positions, True


class Federation:
    """A change feed of the other hosts, handed to this host's hub thread through ``inbox``."""

    def __init__(self, feed: ChangeFeed, *, tombstone_ttl: float, positions_file: str | None = None,
                 resumed: bool = True, silence_after: float = DEFAULT_SILENCE) -> None:
        """``positions_file``: where to keep the feed's positions (the feed was made with them, if any);
        ``resumed=False``: they could not be read, so what was missed while away can't be named;
        ``silence_after``: seconds without a read that reached the log's end before nothing is vouched for
        (more than the feed's poll interval)."""
        self.feed = feed
        self.tombstone_ttl = tombstone_ttl
        self.silence_after = silence_after
        self._silent = True
        self._watcher: threading.Thread | None = None
        self.positions_file = positions_file
        self._resumed = resumed
        self._applied: dict[str, Any] = {}
        self._saved_at = 0.0
        self.inbox: Inbox[HubTask] = Inbox()
        self._stopping = threading.Event()
        #: ``overflows``: seconds the feed waited for the hub thread to catch up; ``silences``: times the
        #: feed went silent (the start not counted).
        self.counts = dict.fromkeys(("batches", "changes", "gaps", "overflows", "silences"), 0)

    def start(self) -> None:
        """Open the inbox and start following (raises the feed's ``StoreError`` if it can't)."""
        self.inbox.open()
        self._hand_over(suspect_all)  # until the feed has read the log to its end
        self.feed.start(self._changes, self._gap)
        self._watcher = threading.Thread(target=self._watch, name="memsession-feed-silence", daemon=True)
        self._watcher.start()
        self._applied = self.feed.positions()
        if not self._resumed:
            self.counts["gaps"] += 1
            log.warning("where the change feed stood is unknown; every session held here is read from "
                        "the store again")
            self._hand_over(invalidate_all)

    def stop(self) -> None:
        self._stopping.set()  # a hand-over waiting for a hub thread that has stopped gives up
        if self._watcher is not None:
            self._watcher.join(5.0)
        self.feed.stop()
        self.inbox.close()
        self._save(force=True)

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "silent": int(self._silent), "feed": self.feed.stats(),
                "positions": len(self.feed.positions())}

    def _watch(self) -> None:
        """Tell the hub when the feed goes silent and when it has caught up again (a thread of its own)."""
        tick = min(0.1, self.silence_after / 10)
        while not self._stopping.wait(tick):
            caught = self.feed.caught_up_at()
            silent = caught is None or time.monotonic() - caught > self.silence_after
            if silent == self._silent:
                continue
            self._silent = silent
            if silent:
                self.counts["silences"] += 1
                log.warning("the change feed of the other hosts has not reached the log's end for %.1fs; "
                            "sessions held here are checked against the store until it does",
                            self.silence_after)
                self._hand_over(suspect_all)
            else:
                log.info("the change feed of the other hosts is caught up; sessions held here are trusted")
                self._hand_over(trust_again)

    def _changes(self, changes: Sequence[Change]) -> None:
        batch = list(changes)
        self.counts["batches"] += 1
        self.counts["changes"] += len(batch)
        ttl = self.tombstone_ttl
        reached = self.feed.positions()
        for change in batch:
            reached[change.host] = max(reached.get(change.host, 0), change.seq)

        def task(state: Any) -> list[list[bytes]]:
            frames = apply_remote(state, batch, ttl)
            self._applied = reached  # (the hub thread: what it applied is what a restart resumes after)
            self._save()
            return frames

        self._hand_over(task)

    def _save(self, *, force: bool = False) -> None:
        """Write where the applied changes reached, at most once a second (atomically: a crash keeps
        the last one written)."""
        path = self.positions_file
        now = time.monotonic()
        if path is None or not self._applied or (not force and now - self._saved_at < _SAVE_EVERY):
            return
        self._saved_at = now
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(self._applied, f)
            os.replace(path + ".tmp", path)
        except OSError as exc:
            log.warning("could not keep the change feed's positions in %s: %s", path, exc)

    def _gap(self, host: str, expected: int, got: int, partitions: int | None = None) -> None:
        """Changes ``expected`` to ``got - 1`` of ``host`` were missed: drop the copies where they were.

        ``partitions`` is the feed's mask of the partitions they fell in (None: it can't say, so all).
        """
        self.counts["gaps"] += 1
        mask = ALL if partitions is None else partitions
        where = "every partition" if mask == ALL else f"{mask.bit_count()} of {PARTITIONS} partitions"
        log.warning("changes of host %s were missed (seq %d to %d); the sessions held here in %s are read "
                    "from the store again", host, expected, got - 1, where)
        if not mask:
            return
        self._hand_over(lambda state: drop_partitions(state, mask))
        # Workers may be pushing what they hold right now (to a sidecar just restarted, or back from a
        # stall): copies from before the gap would come back with the push. Once those have landed,
        # the same partitions are dropped again; later pushes hold only copies read after the drop.

        def drop_again() -> None:
            if not self._stopping.is_set():
                self._hand_over(lambda state: drop_partitions(state, mask))

        again = threading.Timer(DROP_AGAIN, drop_again)
        again.daemon = True
        again.start()

    def _hand_over(self, task: HubTask) -> None:
        """Queue ``task`` for the hub thread, waiting while it is behind (the feed reads on once it is in)."""
        while not self.inbox.put([task], timeout=1.0):
            if self._stopping.is_set():
                return
            self.counts["overflows"] += 1
            log.warning("the hub is more than %d batches of other hosts' changes behind; waiting",
                        self.inbox.limit)
