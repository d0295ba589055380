"""CouchStore: one CouchDB document per session, over CouchDB 3's HTTP API with httpx.

The documents are ``persist.couchdb.documents``'s. ``save`` reads the current
documents of a batch (``_all_docs``), merges each record into the one stored
(``persist.base.merge_row``) and writes what changed with ``_bulk_docs``,
each with the revision it was merged into. A ``_rev`` conflict means another
writer got in between: the store reads those documents again and merges
again, up to ``conflict_retries`` times, so no writer's keys are lost. A
Mango index on ``expires`` serves ``purge``. HTTP is
``persist.couchdb.database``'s; the clear watermark and ``clear`` are
``persist.couchdb.clear``'s.

``save`` reads the watermark in the same ``_all_docs`` request as the
documents it merges into, and once more after writing: if a clear raised it
meanwhile, the save deletes the live sessions it wrote at or below it. Either
that second read sees the new watermark, or the write happened before the
watermark rose and so before the clear's scan, which deletes it. A cleared
document that exists for a moment is never returned: ``load`` and
``load_all`` compare with the watermark too, and leave out the keys it covers
in a newer document (``persist.base.after_clear``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import httpx
import orjson

from memsession.errors import ConfigError, RecordRefused, StoreError, StoreRejected, StoreUnavailable
from memsession.session import Record
from memsession.validate import check_int

from ..base import (
    MAX_VERSION,
    WATERMARK_KEY,
    RefusedRecords,
    after_clear,
    check_open,
    cleared_by,
    coalesce,
    merge_row,
)
from ..rekey import rekey_store
from .clear import ClearableDatabase
from .database import NAME
from .documents import doc_record, session_doc

__all__ = ["CouchStore"]

log = logging.getLogger("memsession.persist")

_DDOC = "memsession"
_INDEX = "expires"
#: Present once the database's documents are keyed by digests (``persist.rekey``); local: never replicated.
_KEYED_MARK = "_local/memsession-keys"
#: Seconds of the random pause before a save merges again after conflicts, doubling per attempt, and its cap.
_CONFLICT_PAUSE = 0.005
_CONFLICT_PAUSE_MAX = 0.1


class CouchStore(ClearableDatabase):
    """Sessions in a CouchDB database (session-pouchdb-store's counterpart).

    Pass ``url`` (the database's URL, ``http[s]://[user:password@]host:5984/db``)
    or ``client``, an ``httpx.Client`` whose ``base_url`` is the database and
    which carries your auth, TLS and proxy settings (you close it). With
    ``create=True`` the database and the ``expires`` index are created if
    missing. ``prefix`` is put before every key to make the document id
    (CouchDB reserves ids that start with ``_``; the watermark's id,
    ``memsession:cleared``, must not start with it). ``max_response_bytes``
    bounds every response read; ``page_size`` the documents per request;
    ``conflict_retries`` how often a batch is read and merged again after
    ``_rev`` conflicts (after a short random pause, so writers that met part).
    With ``create=True`` documents a 0.1 store keeps under raw session ids
    are moved to the ids' digests (``rekey_legacy``).
    """

    name = NAME

    def __init__(
        self,
        url: str | None = None,
        *,
        client: httpx.Client | None = None,
        create: bool = True,
        prefix: str = "s:",
        timeout: float = 10.0,
        page_size: int = 1000,
        purge_batch: int = 1000,
        conflict_retries: int = 10,
        max_response_bytes: int = 64 << 20,
        verify: bool | str = True,
        trust_env: bool = True,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigError("url", url, "pass exactly one of url and client")
        if not isinstance(prefix, str) or not prefix or prefix.startswith("_"):
            raise ConfigError("prefix", prefix, "must be a non-empty string not starting with '_'")
        if WATERMARK_KEY.startswith(prefix):
            raise ConfigError("prefix", prefix, f"must not be the start of {WATERMARK_KEY!r}, the watermark's id")
        for option, value in (
            ("page_size", page_size),
            ("purge_batch", purge_batch),
            ("conflict_retries", conflict_retries),
            ("max_response_bytes", max_response_bytes),
        ):
            check_int(option, value)
        self.prefix = prefix
        self.page_size = page_size
        self.purge_batch = purge_batch
        self.conflict_retries = conflict_retries
        #: Stored documents the record rule refused (skipped by ``load``, ``load_all`` and the follower).
        self.refused = RefusedRecords(NAME)
        super().__init__(
            url,
            client,
            timeout=timeout,
            max_response_bytes=max_response_bytes,
            verify=verify,
            trust_env=trust_env,
        )
        if create:
            try:
                self.create()
                self.rekey_legacy()
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        return f"CouchStore({self.url!r})"

    def create(self) -> None:
        """Create the database and the Mango index on ``expires`` if missing.

        Looks before it writes, so a user who may use but not create an
        existing database (a member, not an admin) passes.
        """
        status, _ = self._request("create", "GET", "", ok=(200, 404))
        if status == 404:
            self._request("create", "PUT", "", ok=(201, 202, 412))
        _, listing = self._request("create", "GET", "_index")
        for index in listing.get("indexes", ()) if isinstance(listing, dict) else ():
            if index.get("ddoc") == f"_design/{_DDOC}" and index.get("name") == _INDEX:
                return
        self._request(
            "create",
            "POST",
            "_index",
            body={"index": {"fields": [_INDEX]}, "name": _INDEX, "ddoc": _DDOC, "type": "json"},
        )

    def rekey_legacy(self) -> None:
        """Move a 0.1 database's documents from raw ids to digests (``persist.rekey``), once.

        Runs when the store is made with ``create=True``; a store made with
        ``create=False`` makes no request when it is made, so call this once
        after upgrading. ``_local/memsession-keys`` marks a database that is
        done, so later calls cost one GET; a database that does not exist has
        nothing to move.
        """
        status, _ = self._request("rekey", "GET", _KEYED_MARK, ok=(200, 404))
        if status == 200:
            return
        status, _ = self._request("rekey", "GET", "", ok=(200, 404))
        if status == 404:
            return
        rekey_store(self)
        self._request("rekey", "PUT", _KEYED_MARK, body={"keys": "sha256 of the session id"}, ok=(200, 201, 409))

    # -- documents -------------------------------------------------------------------

    def doc_id(self, key: str) -> str:
        return self.prefix + key

    def _doc(self, record: Record) -> dict[str, Any]:
        return session_doc(record, self.prefix)

    def _record(self, doc: Any) -> Record:
        """The document's record: ``RecordRefused`` if the record rule refuses it, ``StoreError`` if it is none."""
        return doc_record(doc, self.prefix)

    # -- the Store protocol ----------------------------------------------------------

    def load(self, key: str) -> Record | None:
        # One request for the document and the watermark: as cheap as a GET.
        doc_id = self.prefix + key
        current = self._current("load", [doc_id, WATERMARK_KEY], include_docs=True)
        row = current.get(doc_id)
        if row is None:
            return None
        try:
            record = self._record(row["doc"])
        except RecordRefused as exc:
            self.refused.skip(exc)
            return None
        mark = current.get(WATERMARK_KEY)
        return after_clear(record, 0 if mark is None else self._watermark_of(mark["doc"], "load"))

    def load_all(self, now: float) -> Iterator[Record]:
        check_open(self._closed, NAME, "load_all")
        return self._pages(now)

    def _pages(self, now: float) -> Iterator[Record]:
        watermark = self._watermark("load_all")
        start = orjson.dumps(self.prefix).decode()
        end = orjson.dumps(self.prefix + "\ufff0").decode()
        skip = 0
        while True:
            params = {
                "include_docs": "true",
                "startkey": start,
                "endkey": end,
                "limit": self.page_size,
                "skip": skip,
            }
            _, payload = self._request("load_all", "GET", "_all_docs", params=params)
            rows = payload.get("rows", [])
            for row in rows:
                try:
                    record = self._record(row.get("doc"))
                except (RecordRefused, StoreError) as exc:
                    # One bad document must not cost every other (a sidecar loads them all at start).
                    self.refused.skip(exc)
                    continue
                kept = after_clear(record, watermark)
                if kept is not None and kept.expires > now:
                    yield kept
            if len(rows) < self.page_size:
                return
            start = orjson.dumps(rows[-1]["id"]).decode()
            skip = 1

    def save(self, records: Sequence[Record]) -> int:
        check_open(self._closed, NAME, "save")
        batch = list(coalesce(records).values())
        written: dict[str, tuple[str, Record]] = {}
        refused: list[str] = []
        floor = MAX_VERSION
        for begin in range(0, len(batch), self.page_size):
            floor = min(floor, self._save_page(batch[begin : begin + self.page_size], refused, written))
        if written:
            self._undo_cleared(written, floor)
        if refused:
            raise StoreRejected(
                f"CouchDB refused {len(refused)} of {len(batch)} documents (wrote {len(written)})",
                keys=refused,
                store=NAME,
                op="save",
            )
        return len(written)

    def _undo_cleared(self, written: dict[str, tuple[str, Record]], floor: int) -> None:
        """Delete the live records this save wrote at or below a watermark raised since it decided.

        See the module docstring; tombstones are never taken back. Costs one
        more GET per save: reads would hide such a record anyway, but without
        this it would sit in the database (and in CouchDB replicas) until purged.
        """
        watermark = self._watermark("save")
        if watermark <= floor:
            return
        late = {doc_id: rev for doc_id, (rev, record) in written.items() if cleared_by(record, watermark)}
        # A conflict means a newer write replaced ours; whoever made it checks in turn.
        self._remove("save", late)
        for doc_id in late:
            del written[doc_id]

    def _save_page(self, page: list[Record], refused: list[str], written: dict[str, tuple[str, Record]]) -> int:
        """Merge one page into the stored documents and write them; return the lowest watermark it merged with.

        What it wrote goes to ``written`` (doc id to new revision and the
        merged record), documents the server refuses (not conflicts) to
        ``refused``. A conflict reads the document again and merges again.
        """
        remaining = {self.prefix + r.key: r for r in page}
        floor = MAX_VERSION
        for attempt in range(self.conflict_retries):
            if attempt:
                # Writers that met on a document would meet again if they all came straight back.
                time.sleep(random.uniform(0.0, min(_CONFLICT_PAUSE_MAX, _CONFLICT_PAUSE * 2**attempt)))
            current = self._current("save", [*remaining, WATERMARK_KEY], include_docs=True)
            mark = current.pop(WATERMARK_KEY, None)
            watermark = 0 if mark is None else self._watermark_of(mark["doc"], "save")
            floor = min(floor, watermark)
            docs = []
            merged_by_id: dict[str, Record] = {}
            for doc_id, record in list(remaining.items()):
                row = current.get(doc_id)
                merged = merge_row(None if row is None else self._stored(row["doc"]), record, watermark)
                if merged is None:
                    del remaining[doc_id]  # nothing to write: the stored document holds it all already
                    continue
                doc = self._doc(merged)
                if row is not None:
                    doc["_rev"] = row["value"]["rev"]
                docs.append(doc)
                merged_by_id[doc_id] = merged
            if not docs:
                return floor
            _, results = self._request("save", "POST", "_bulk_docs", body={"docs": docs})
            for result in results:
                doc_id = result.get("id")
                if result.get("ok"):
                    if remaining.pop(doc_id, None) is not None:
                        written[doc_id] = (result.get("rev"), merged_by_id[doc_id])
                elif result.get("error") != "conflict":
                    unwritten = remaining.pop(doc_id, None)
                    if unwritten is None:
                        raise StoreError(f"CouchDB save: result for an unknown document ({result.get('error')})",
                                         store=NAME, op="save")
                    log.warning("CouchDB refused a session document: %s %s", result.get("error"),
                                result.get("reason", ""))
                    refused.append(unwritten.key)
            if not remaining:
                return floor
        raise StoreUnavailable(
            f"CouchDB save: {len(remaining)} documents were changed by other writers each of the "
            f"{self.conflict_retries} times they were merged (conflict_retries); the batch may be retried",
            store=NAME,
            op="save",
        )

    def _stored(self, doc: Any) -> Record | None:
        """A stored document a save merges into; one that is no readable session is as good as absent (and counted)."""
        try:
            return self._record(doc)
        except (RecordRefused, StoreError) as exc:
            self.refused.skip(exc)
            return None

    def delete(self, keys: Iterable[str]) -> int:
        check_open(self._closed, NAME, "delete")
        ids = list(dict.fromkeys(self.prefix + k for k in keys))
        removed = 0
        for begin in range(0, len(ids), self.page_size):
            page = ids[begin : begin + self.page_size]
            for _ in range(self.conflict_retries):
                current = self._current("delete", page, include_docs=False)
                if not current:
                    break
                revs = {doc_id: row["value"]["rev"] for doc_id, row in current.items()}
                done = self._remove("delete", revs)
                removed += done
                if done == len(revs):
                    break
                page = list(revs)
        return removed

    def purge(self, now: float) -> int:
        """Delete expired documents found through the ``expires`` index, ``purge_batch`` at a time.

        A document updated between the query and the delete (a conflict) is
        left for the next purge.
        """
        check_open(self._closed, NAME, "purge")
        total = 0
        while True:
            _, payload = self._request(
                "purge",
                "POST",
                "_find",
                body={
                    "selector": {_INDEX: {"$gte": 0, "$lte": now}},
                    "fields": ["_id", "_rev"],
                    "limit": self.purge_batch,
                    "use_index": [_DDOC, _INDEX],
                },
            )
            docs = [d for d in payload.get("docs", ()) if d.get("_id", "").startswith(self.prefix)]
            removed = self._remove("purge", {d["_id"]: d["_rev"] for d in docs})
            total += removed
            if len(payload.get("docs", ())) < self.purge_batch or removed == 0:
                return total
