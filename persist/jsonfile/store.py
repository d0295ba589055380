"""JsonFileStore: sessions in memory, snapshotted to one JSON-lines file (its format: ``snapshot``).

Every snapshot replaces the file whole and atomically. Writes between two
snapshots are lost if the process dies: durability is "as of the last
snapshot" (every ``save_interval`` seconds, and on ``close()``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from memsession import lockfile
from memsession.changes import merge_records
from memsession.clock import SYSTEM_CLOCK, Clock
from memsession.errors import ConfigError, StoreCorrupt, StoreError
from memsession.session import Record
from memsession.validate import check_choice, check_number

from ..base import RefusedRecords, after_clear, check_clear_version, check_open, coalesce, merge_row
from ..rekey import rekey_store
from .snapshot import NAME, open_snapshot, write_snapshot

__all__ = ["JsonFileStore"]

log = logging.getLogger("memsession.persist")


def folder_problem(path: str) -> str | None:
    """Why no session file can be kept at ``path`` (its folder is missing, or not a folder); None if it can."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        return None
    # The folder is never made here: a typo in the path would silently start an empty store elsewhere.
    what = "is not a folder" if os.path.exists(folder) else "does not exist"
    return f"the folder {folder} {what}; create it or choose a store in an existing folder"


def _lock_name(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.lock")


def _lock_file(path: str) -> int | None:
    """Hold an exclusive lock on ``<folder>/.<name>.lock``; ConfigError if another process holds it.

    ``close`` removes the lock file as it lets go (``memsession.lockfile`` says why that never
    lets two stores in); one left by a process killed outright is taken over.
    """
    if sys.platform == "win32":  # pragma: no cover - no flock; one owner per file is then up to you
        return None
    try:
        fd = lockfile.acquire(_lock_name(path))
    except OSError as exc:
        raise StoreError(f"can't lock {_lock_name(path)}: {exc}", store=NAME, op="open") from exc
    if fd is None:
        raise ConfigError("path", path, "the file is in use by another JsonFileStore (one owner per file)")
    return fd


class JsonFileStore:
    """Sessions kept in a dict here and snapshotted to ``path`` (memorystore's saveFile).

    ``save_interval`` (seconds, memorystore's savePeriod): how often a
    background thread writes the file if anything changed; ``None`` writes
    only on ``snapshot()`` and ``close()``. ``on_corrupt="raise"`` refuses to
    start on a damaged file (``StoreCorrupt`` names it and what is wrong, the
    file is left untouched); ``"move_aside"`` renames it to
    ``<path>.corrupt-<time>``, logs a warning and starts empty.

    One store owns a file: a second one on the same path (in any process)
    fails at construction, since two writers would overwrite each other's
    snapshots. Several processes share sessions through the sidecar instead.
    """

    name = NAME

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        save_interval: float | None = 60.0,
        on_corrupt: Literal["raise", "move_aside"] = "raise",
        clock: Clock = SYSTEM_CLOCK,
        fsync: bool = True,
        max_line_bytes: int = 8 << 20,
    ) -> None:
        check_number("save_interval", save_interval, allow_none=True)
        check_choice("on_corrupt", on_corrupt, ("raise", "move_aside"))
        self.path = os.fspath(path)
        problem = folder_problem(self.path)
        if problem is not None:
            raise ConfigError("path", self.path, problem)
        self._lock_fd = _lock_file(self.path)
        self.save_interval = save_interval
        self.clock = clock
        self._fsync = fsync
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        #: Never holds a live record the watermark covers, nor a key it covers in a newer one:
        #: loading, ``save`` and ``clear`` keep them out.
        self._records: dict[str, Record] = {}
        #: The clear watermark; raised only, written with the records.
        self._cleared = 0
        self._changes = 0
        self._closed = False
        self.snapshots = 0
        self.snapshot_errors = 0
        #: Records of the file the record rule refused (skipped at load).
        self.refused = RefusedRecords(NAME)
        try:
            snapshot = open_snapshot(self.path, clock.wall(), max_line_bytes=max_line_bytes,
                                     on_refused=self.refused.skip)
            # Kept even if a record turns out damaged: a watermark read is one more
            # guard against resurrection, whatever happens to the records.
            self._cleared = snapshot.cleared
            records = self._records
            for record in snapshot.records:
                # A file edited by hand (or joined from two) may repeat a key: the lines merge.
                merged = merge_records(records.get(record.key), record)
                if merged is not None:
                    records[record.key] = merged
        except FileNotFoundError:
            pass
        except StoreCorrupt:
            if on_corrupt == "raise":
                self._unlock()
                raise
            aside = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            os.replace(self.path, aside)
            log.warning("session file %s is damaged; moved it to %s and started empty", self.path, aside)
            self._records.clear()
        except OSError as exc:
            self._unlock()
            raise StoreError(f"can't read {self.path}: {exc}", store=NAME, op="load") from exc
        # Sessions a 0.1 file holds under their ids move to the digests, and the file is
        # rewritten now: the ids must not stay on disk until the next snapshot.
        try:
            if rekey_store(self):
                self._snapshot(force=True)
        except BaseException:
            self._unlock()
            raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if save_interval is not None:
            self._thread = threading.Thread(target=self._run, name="memsession-jsonfile", daemon=True)
            self._thread.start()

    def __repr__(self) -> str:
        return f"JsonFileStore({self.path!r}, save_interval={self.save_interval!r})"

    def load(self, key: str) -> Record | None:
        check_open(self._closed, NAME, "load")
        return self._records.get(key)

    def load_all(self, now: float) -> Iterator[Record]:
        check_open(self._closed, NAME, "load_all")
        with self._lock:
            records = list(self._records.values())
        return (r for r in records if r.expires > now)

    def save(self, records: Sequence[Record]) -> int:
        written = 0
        with self._lock:
            check_open(self._closed, NAME, "save")
            stored = self._records
            cleared = self._cleared
            # The batch merged per key first, then the watermark (which lets tombstones
            # through): as the other stores do, so a batch lands the same whether a clear
            # came before or after it.
            for key, record in coalesce(records).items():
                merged = merge_row(stored.get(key), record, cleared)
                if merged is not None:
                    stored[key] = merged
                    written += 1
            self._changes += written
        return written

    def clear(self, version: int) -> int:
        """Drop live records at or below ``version``, raise the watermark and write the file at once.

        Newer live records lose the keys it covers (``after_clear``).
        Tombstones stay, whatever their version, until they lapse. The
        snapshot is written before returning (only if something changed):
        unlike a save, a clear lost in a crash would bring sessions back.
        """
        check_clear_version(version, NAME)
        with self._lock:
            check_open(self._closed, NAME, "clear")
            raised = version > self._cleared
            self._cleared = max(self._cleared, version)
            records = self._records
            gone = 0
            for key, record in list(records.items()):
                kept = after_clear(record, version)
                if kept is None:
                    del records[key]
                    gone += 1
                elif kept is not record:
                    records[key] = kept
                    self._changes += 1
            self._changes += gone + raised
        self._snapshot(force=False)
        return gone

    def delete(self, keys: Iterable[str]) -> int:
        removed = 0
        with self._lock:
            check_open(self._closed, NAME, "delete")
            for key in keys:
                if self._records.pop(key, None) is not None:
                    removed += 1
            self._changes += removed
        return removed

    def purge(self, now: float) -> int:
        with self._lock:
            check_open(self._closed, NAME, "purge")
            dead = [k for k, r in self._records.items() if r.expires <= now]
            for key in dead:
                del self._records[key]
            self._changes += len(dead)
        return len(dead)

    def snapshot(self) -> int:
        """Write the file now (if anything changed since the last write); return records written."""
        check_open(self._closed, NAME, "snapshot")
        return self._snapshot(force=False)

    def _snapshot(self, force: bool) -> int:
        with self._write_lock:
            with self._lock:
                if not self._changes and not force:
                    return 0
                changes = self._changes
                self._changes = 0
                records = list(self._records.values())
                cleared = self._cleared
            try:
                count = write_snapshot(self.path, records, self.clock.wall(), fsync=self._fsync, cleared=cleared)
            except BaseException as exc:
                with self._lock:
                    self._changes += changes
                self.snapshot_errors += 1
                if isinstance(exc, OSError):
                    raise StoreError(f"can't write {self.path}: {exc}", store=NAME, op="snapshot") from exc
                raise
            self.snapshots += 1
            return count

    def _run(self) -> None:
        assert self.save_interval is not None
        while not self._stop.wait(self.save_interval):
            try:
                self._snapshot(force=False)
            except Exception:
                log.exception("periodic snapshot of %s failed; will retry", self.path)

    def close(self) -> None:
        """Stop the snapshot thread and write a final snapshot. Idempotent."""
        with self._lock:
            if self._closed:
                return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self._snapshot(force=False)
        finally:
            with self._lock:
                self._closed = True
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            lockfile.release(_lock_name(self.path), self._lock_fd)
            self._lock_fd = None

    def stats(self) -> dict[str, Any]:
        return {
            "records": len(self._records),
            "cleared": self._cleared,
            "unsaved_changes": self._changes,
            "snapshots": self.snapshots,
            "snapshot_errors": self.snapshot_errors,
            "refused": self.refused.count,
        }
