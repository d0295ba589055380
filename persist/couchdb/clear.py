"""The clear watermark in CouchDB: its document, how ``clear`` raises it and sweeps what it covers.

The watermark is one document outside the session prefix (so ``load_all``,
``purge``, ``delete`` and the follower's sessions never include it) and
without ``expires``::

    {"_id": "memsession:cleared", "type": "memsession-watermark",
     "version": "<decimal>",   the watermark
     "swept": "<decimal>"}     the highest watermark whose deletions finished

The watermark covers live sessions only (``persist.base.cleared_by``: a
document with ``"deleted": false`` and a version at or below it); our
tombstones stay until they lapse and are saved whatever their version.
CouchDB has no transactions, so the order of steps carries the guarantee.
``clear`` raises the watermark first, then deletes the live sessions it
covers, then records the sweep as done; a clear that ``swept`` covers does
nothing more (every replica repeats a clear), one it doesn't scans again.
A save that decided by a lower watermark takes back what the clear covers
(see ``persist.couchdb.store``). A tombstone that replaces a live document
the sweep is about to delete makes that delete conflict; the sweep reads the
document again and leaves the tombstone.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from memsession.errors import StoreError, StoreUnavailable

from ..base import MAX_VERSION, WATERMARK_KEY, check_clear_version, check_open
from .database import NAME, CouchDatabase

__all__ = ["WATERMARK_PATH", "ClearableDatabase"]

WATERMARK_PATH = quote(WATERMARK_KEY, safe="")


class ClearableDatabase(CouchDatabase):
    """A database of session documents under ``prefix`` that keeps the clear watermark (``CouchStore``'s base)."""

    #: Set by ``CouchStore``: the session documents' id prefix, and its batch and retry bounds.
    prefix: str
    purge_batch: int
    conflict_retries: int

    @staticmethod
    def _watermark_of(doc: Any, op: str, field: str = "version") -> int:
        value = doc.get(field, "0" if field == "swept" else None) if isinstance(doc, dict) else None
        if type(value) is not str or not value.isdecimal() or int(value) > MAX_VERSION:
            raise StoreError("the clear watermark document can't be read", store=NAME, op=op)
        return int(value)

    def _watermark(self, op: str) -> int:
        """The stored watermark (0: never cleared)."""
        status, doc = self._request(op, "GET", WATERMARK_PATH, ok=(200, 404))
        return 0 if status == 404 else self._watermark_of(doc, op)

    def clear(self, version: int) -> int:
        """Raise the watermark document, then delete the live sessions it covers, ``purge_batch`` at a time.

        Tombstones stay, whatever their version, until a purge removes them
        once they lapse. The scan reads ``_all_docs`` in id order (a Mango range on ``_id``
        would compare ids by collation rather than by code point and could
        skip some). If it stops midway, the watermark already hides what is
        left from every read, and a retry finishes the work.
        """
        check_open(self._closed, NAME, "clear")
        watermark, swept = self._raise_watermark(check_clear_version(version, NAME), "version")
        if swept >= version:
            return 0
        removed = self._sweep(watermark)
        self._raise_watermark(watermark, "swept")
        return removed

    def _sweep(self, watermark: int) -> int:
        """Delete every live session document at or below ``watermark``; return how many went."""
        end = orjson.dumps(self.prefix + "\ufff0").decode()
        after: str | None = None
        total = 0
        while True:
            # Inclusive of ``after`` (it may be gone by now, so skip=1 could skip another).
            limit = self.purge_batch + (after is not None)
            params = {
                "include_docs": "true",
                "startkey": orjson.dumps(self.prefix if after is None else after).decode(),
                "endkey": end,
                "limit": limit,
            }
            _, payload = self._request("clear", "GET", "_all_docs", params=params)
            rows = payload.get("rows", [])
            docs = {row["id"]: row["doc"] for row in rows if row["id"] != after and isinstance(row.get("doc"), dict)}
            total += self._remove_cleared(docs, watermark)
            if len(rows) < limit:
                return total
            after = rows[-1]["id"]

    def _raise_watermark(self, version: int, field: str) -> tuple[int, int]:
        """Make the document's ``field`` ("version" or "swept") at least ``version``.

        Returns the stored watermark and sweep mark as they then are.
        """
        for _ in range(self.conflict_retries):
            status, doc = self._request("clear", "GET", WATERMARK_PATH, ok=(200, 404))
            stored = {"version": 0, "swept": 0}
            if status == 200:
                stored = {name: self._watermark_of(doc, "clear", name) for name in stored}
            if stored[field] >= version:
                return stored["version"], stored["swept"]
            stored[field] = version
            body: dict[str, Any] = {"_id": WATERMARK_KEY, "type": "memsession-watermark"}
            body.update((name, str(value)) for name, value in stored.items())
            if status == 200:
                body["_rev"] = doc["_rev"]
            status, _ = self._request("clear", "PUT", WATERMARK_PATH, ok=(201, 202, 409), body=body)
            if status != 409:
                return stored["version"], stored["swept"]
        raise StoreUnavailable(
            f"CouchDB clear: the watermark still conflicting after {self.conflict_retries} tries",
            store=NAME,
            op="clear",
        )

    @staticmethod
    def _cleared_doc(doc: dict[str, Any], watermark: int) -> bool:
        """``cleared_by`` on a stored document, without decoding its data."""
        version = doc.get("version")
        # Not a session document (another application's): not ours to delete.
        if type(version) is not str or not version.isdecimal():
            return False
        # A tombstone is never cleared; a document whose flag is not a boolean is not ours.
        return doc.get("deleted", False) is False and int(version) <= watermark

    def _remove_cleared(self, docs: dict[str, dict[str, Any]], watermark: int) -> int:
        revs = {doc_id: doc["_rev"] for doc_id, doc in docs.items() if self._cleared_doc(doc, watermark)}
        removed = 0
        for _ in range(self.conflict_retries):
            if not revs:
                return removed
            done = self._remove("clear", revs)
            removed += done
            if done == len(revs):
                return removed
            # Conflicts: another writer changed some; delete those still covered.
            current = self._current("clear", list(revs), include_docs=True)
            revs = {
                doc_id: row["doc"]["_rev"]
                for doc_id, row in current.items()
                if self._cleared_doc(row["doc"], watermark)
            }
        if not revs:
            return removed
        raise StoreUnavailable(
            f"CouchDB clear: {len(revs)} documents still conflicting after {self.conflict_retries} tries",
            store=NAME,
            op="clear",
        )
