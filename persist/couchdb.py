"""CouchStore: one CouchDB document per session, over CouchDB 3's HTTP API with httpx.

A session document::

    {"_id": "<prefix><key>", "_rev": "...", "type": "memsession",
     "data": {...},            encode_data with safe_ints: exact through JavaScript servers too
     "version": "<decimal>",   64-bit ints as strings: JSON numbers may be doubles
     "origin": "<decimal>",
     "created": 1763900000.123, "accessed": ..., "expires": ...,   wall seconds;
                                                  no "expires" when it never expires
     "deleted": false}         our tombstone (a live CouchDB document)

``save`` reads the current revisions of a batch (``_all_docs``), writes the
records that ``supersede`` what is stored with ``_bulk_docs``, and on a
``_rev`` conflict (another writer got there first) reads and decides again,
so the newer version always ends up stored. A Mango index on ``expires``
serves ``purge``. ``CouchFollower`` follows ``_changes`` and feeds other
hosts' writes into a local SessionCache (``cache.apply``).

The clear watermark is one more document, outside the session prefix (so
``load_all``, ``purge``, ``delete`` and the follower's sessions never include
it) and without ``expires``::

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
``save`` reads the watermark in the same ``_all_docs`` request as the
revisions it decides on, and once more after writing: if a clear raised it
meanwhile, the save deletes the live sessions it wrote at or below it. Either
that second read sees the new watermark, or the write happened before the
watermark rose and so before the clear's scan, which deletes it. A cleared
document that exists for a moment is never returned: ``load`` and
``load_all`` compare with the watermark too. A tombstone that replaces a live
document the sweep is about to delete makes that delete conflict; the sweep
reads the document again and leaves the tombstone.

Credentials in the URL are moved to HTTP basic auth and never appear in
reprs, logs or errors. Every response body is read with a size limit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import quote

import orjson

from memsession.clock import SYSTEM_CLOCK, Clock
from memsession.errors import ConfigError, StoreError, StoreRejected, StoreUnavailable
from memsession.session import Record

from .base import (
    MAX_VERSION,
    WATERMARK_KEY,
    check_clear_version,
    check_open,
    cleared_by,
    coalesce,
    decode_data,
    json_default,
    jsonable_data,
    make_record,
    supersedes,
)

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("CouchStore needs httpx: pip install 'memsession[couchdb]'") from exc

__all__ = ["CouchFollower", "CouchStore"]

log = logging.getLogger("memsession.persist")

_NAME = "couchdb"
_DDOC = "memsession"
_INDEX = "expires"
_WATERMARK_PATH = quote(WATERMARK_KEY, safe="")
#: Version of the tombstones ``CouchFollower`` hands over for documents gone from CouchDB:
#: below every real write (versions start above 0), so they never outrank a real tombstone.
_EVICTION_VERSION = 0


def _split_url(url: str) -> tuple[httpx.URL, tuple[str, str] | None]:
    """The database URL without credentials, and the credentials."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ConfigError("url", "<hidden>", f"not a URL: {type(exc).__name__}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError("url", parsed.copy_with(username=None, password=None), "must be an http(s) URL")
    auth = None
    if parsed.username or parsed.password:
        auth = (parsed.username, parsed.password)
        parsed = parsed.copy_with(username=None, password=None)
    if parsed.path.strip("/") == "":
        raise ConfigError("url", parsed, "must name the database: http://host:5984/<database>")
    if not parsed.path.endswith("/"):
        parsed = parsed.copy_with(path=parsed.path + "/")
    return parsed, auth


class CouchStore:
    """Sessions in a CouchDB database (session-pouchdb-store's counterpart).

    Pass ``url`` (the database's URL, ``http[s]://[user:password@]host:5984/db``)
    or ``client``, an ``httpx.Client`` whose ``base_url`` is the database and
    which carries your auth, TLS and proxy settings (you close it). With
    ``create=True`` the database and the ``expires`` index are created if
    missing. ``prefix`` is put before every key to make the document id
    (CouchDB reserves ids that start with ``_``; the watermark's id,
    ``memsession:cleared``, must not start with it). ``max_response_bytes``
    bounds every response read; ``page_size`` the documents per request;
    ``conflict_retries`` how often a batch is re-read after ``_rev`` conflicts.
    """

    name = _NAME

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
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(option, value, "must be an int >= 1")
        self.prefix = prefix
        self.page_size = page_size
        self.purge_batch = purge_batch
        self.conflict_retries = conflict_retries
        self.max_response_bytes = max_response_bytes
        self._closed = False
        self._owns_client = client is None
        if client is None:
            assert url is not None
            base, auth = _split_url(url)
            client = httpx.Client(base_url=base, auth=auth, timeout=timeout, verify=verify, trust_env=trust_env)
        self.client = client
        self.url = str(client.base_url)
        if create:
            try:
                self.create()
            except BaseException:
                self.close()
                raise

    def __repr__(self) -> str:
        return f"CouchStore({self.url!r})"

    # -- HTTP ----------------------------------------------------------------------

    def _request(
        self,
        op: str,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200, 201, 202),
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> tuple[int, Any]:
        check_open(self._closed, _NAME, op)
        content = None
        headers = {"Accept": "application/json"}
        if body is not None:
            content = orjson.dumps(body, default=json_default)
            headers["Content-Type"] = "application/json"
        try:
            with self.client.stream(method, path, params=params, content=content, headers=headers) as response:
                status = response.status_code
                chunks = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise StoreError(
                            f"CouchDB {op}: response larger than {self.max_response_bytes} bytes",
                            store=_NAME,
                            op=op,
                        )
                    chunks.append(chunk)
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"CouchDB {op} failed: {type(exc).__name__}: {exc}", store=_NAME, op=op) from exc
        raw = b"".join(chunks)
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise StoreError(f"CouchDB {op}: response is not JSON (HTTP {status})", store=_NAME, op=op) from exc
        if status in ok:
            return status, payload
        reason = payload.get("reason") if isinstance(payload, dict) else None
        error = payload.get("error") if isinstance(payload, dict) else None
        message = f"CouchDB {op}: HTTP {status} {error or ''} {reason or ''}".strip()
        if status >= 500 or status == 429:
            raise StoreUnavailable(message, store=_NAME, op=op)
        raise StoreError(message, store=_NAME, op=op)

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

    # -- documents -------------------------------------------------------------------

    def doc_id(self, key: str) -> str:
        return self.prefix + key

    def _doc(self, record: Record) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "_id": self.prefix + record.key,
            "type": "memsession",
            "data": jsonable_data(record.data, record.flat, safe_ints=True),
            "version": str(record.version),
            "origin": str(record.origin),
            "created": record.created,
            "accessed": record.accessed,
            "deleted": record.deleted,
        }
        if record.expires != float("inf"):
            doc["expires"] = record.expires
        return doc

    def _record(self, doc: Any) -> Record:
        try:
            doc_id = doc["_id"]
            if not doc_id.startswith(self.prefix):
                raise ValueError(f"the id lacks the prefix {self.prefix!r}")
            version, origin = doc["version"], doc["origin"]
            if type(version) is not str or type(origin) is not str:
                raise ValueError("version and origin must be decimal strings")
            return make_record(
                doc_id[len(self.prefix) :],
                decode_data(doc["data"]),
                int(version),
                int(origin),
                doc["created"],
                doc["accessed"],
                doc.get("expires"),
                doc.get("deleted", False),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # No id in the message: session ids must not reach logs.
            raise StoreError(f"a CouchDB document is not a session: {exc}", store=_NAME, op="load") from exc

    def _current(self, op: str, ids: list[str], include_docs: bool) -> dict[str, dict[str, Any]]:
        """``{id: row}`` for the ids that exist (not deleted)."""
        _, payload = self._request(
            op,
            "POST",
            "_all_docs",
            params={"include_docs": "true"} if include_docs else None,
            body={"keys": ids},
        )
        out = {}
        for row in payload.get("rows", ()):
            value = row.get("value")
            if "error" in row or not isinstance(value, dict) or value.get("deleted"):
                continue
            out[row["key"]] = row
        return out

    # -- the Store protocol ----------------------------------------------------------

    @staticmethod
    def _watermark_of(doc: Any, op: str, field: str = "version") -> int:
        value = doc.get(field, "0" if field == "swept" else None) if isinstance(doc, dict) else None
        if type(value) is not str or not value.isdecimal() or int(value) > MAX_VERSION:
            raise StoreError("the clear watermark document can't be read", store=_NAME, op=op)
        return int(value)

    def _watermark(self, op: str) -> int:
        """The stored watermark (0: never cleared)."""
        status, doc = self._request(op, "GET", _WATERMARK_PATH, ok=(200, 404))
        return 0 if status == 404 else self._watermark_of(doc, op)

    def load(self, key: str) -> Record | None:
        # One request for the document and the watermark: as cheap as a GET.
        doc_id = self.prefix + key
        current = self._current("load", [doc_id, WATERMARK_KEY], include_docs=True)
        row = current.get(doc_id)
        if row is None:
            return None
        record = self._record(row["doc"])
        mark = current.get(WATERMARK_KEY)
        if mark is not None and cleared_by(record, self._watermark_of(mark["doc"], "load")):
            return None
        return record

    def load_all(self, now: float) -> Iterator[Record]:
        check_open(self._closed, _NAME, "load_all")
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
                record = self._record(row["doc"])
                if record.expires > now and not cleared_by(record, watermark):
                    yield record
            if len(rows) < self.page_size:
                return
            start = orjson.dumps(rows[-1]["id"]).decode()
            skip = 1

    def save(self, records: Sequence[Record]) -> int:
        check_open(self._closed, _NAME, "save")
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
                store=_NAME,
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
        """Write one page; return the lowest watermark it decided by.

        What it wrote goes to ``written`` (doc id to new revision and record),
        documents the server refuses (not conflicts) to ``refused``.
        """
        remaining = {self.prefix + r.key: r for r in page}
        floor = MAX_VERSION
        for _ in range(self.conflict_retries):
            current = self._current("save", [*remaining, WATERMARK_KEY], include_docs=True)
            mark = current.pop(WATERMARK_KEY, None)
            watermark = 0 if mark is None else self._watermark_of(mark["doc"], "save")
            floor = min(floor, watermark)
            docs = []
            for doc_id, record in list(remaining.items()):
                if cleared_by(record, watermark):
                    del remaining[doc_id]
                    continue
                row = current.get(doc_id)
                if row is not None and not supersedes(record, self._record(row["doc"])):
                    del remaining[doc_id]
                    continue
                doc = self._doc(record)
                if row is not None:
                    doc["_rev"] = row["value"]["rev"]
                docs.append(doc)
            if not docs:
                return floor
            _, results = self._request("save", "POST", "_bulk_docs", body={"docs": docs})
            for result in results:
                doc_id = result.get("id")
                if result.get("ok"):
                    done = remaining.pop(doc_id, None)
                    if done is not None:
                        written[doc_id] = (result.get("rev"), done)
                elif result.get("error") != "conflict":
                    unwritten = remaining.pop(doc_id, None)
                    if unwritten is None:
                        raise StoreError(f"CouchDB save: result for an unknown document ({result.get('error')})",
                                         store=_NAME, op="save")
                    log.warning("CouchDB refused a session document: %s %s", result.get("error"),
                                result.get("reason", ""))
                    refused.append(unwritten.key)
            if not remaining:
                return floor
        raise StoreUnavailable(
            f"CouchDB save: {len(remaining)} documents still conflicting after {self.conflict_retries} tries",
            store=_NAME,
            op="save",
        )

    def _remove(self, op: str, revs: dict[str, str]) -> int:
        if not revs:
            return 0
        docs = [{"_id": doc_id, "_rev": rev, "_deleted": True} for doc_id, rev in revs.items()]
        _, results = self._request(op, "POST", "_bulk_docs", body={"docs": docs})
        removed = 0
        for result in results:
            if result.get("ok"):
                removed += 1
            elif result.get("error") != "conflict":
                raise StoreError(f"CouchDB {op} of a document: {result.get('error')}", store=_NAME, op=op)
        return removed

    def delete(self, keys: Iterable[str]) -> int:
        check_open(self._closed, _NAME, "delete")
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
        check_open(self._closed, _NAME, "purge")
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

    def clear(self, version: int) -> int:
        """Raise the watermark document, then delete the live sessions it covers, ``purge_batch`` at a time.

        Tombstones stay, whatever their version, until a purge removes them
        once they lapse. The scan reads ``_all_docs`` in id order (a Mango range on ``_id``
        would compare ids by collation rather than by code point and could
        skip some). If it stops midway, the watermark already hides what is
        left from every read, and a retry finishes the work.
        """
        check_open(self._closed, _NAME, "clear")
        watermark, swept = self._raise_watermark(check_clear_version(version, _NAME), "version")
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
            status, doc = self._request("clear", "GET", _WATERMARK_PATH, ok=(200, 404))
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
            status, _ = self._request("clear", "PUT", _WATERMARK_PATH, ok=(201, 202, 409), body=body)
            if status != 409:
                return stored["version"], stored["swept"]
        raise StoreUnavailable(
            f"CouchDB clear: the watermark still conflicting after {self.conflict_retries} tries",
            store=_NAME,
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
            store=_NAME,
            op="clear",
        )

    def close(self) -> None:
        """Close the HTTP client the store made (a client passed in stays open). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            self.client.close()


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
    document at or below it is not handed over. An exception from a
    callback is logged and counted; the follower goes on.
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
        if not heartbeat > 0:
            raise ConfigError("heartbeat", heartbeat, "must be > 0 seconds")
        self.store = store
        self.on_record = on_record
        self.on_clear = on_clear
        #: The highest clear watermark seen (0: never cleared).
        self.watermark = 0
        self.since: str | int = since
        self.heartbeat = heartbeat
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.max_line_bytes = max_line_bytes
        self.clock = clock
        self.counts = dict.fromkeys(
            ("changes", "records", "deletions", "clears", "errors", "reconnects", "skipped"), 0
        )
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CouchFollower:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="memsession-couch-changes", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop following; returns within about ``heartbeat`` seconds. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> CouchFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        backoff = self.retry_min
        try:
            while not self._stop.is_set():
                try:
                    self._follow()
                    backoff = self.retry_min
                except Exception as exc:
                    self.connected.clear()
                    if self._stop.is_set():
                        break
                    self.counts["errors"] += 1
                    log.warning(
                        "following CouchDB changes failed (%s: %s); reconnecting in %.1fs",
                        type(exc).__name__,
                        exc,
                        backoff,
                    )
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.retry_max)
                else:
                    self.counts["reconnects"] += 1
        finally:
            self.connected.clear()

    def _follow(self) -> None:
        params: dict[str, str | int] = {
            "feed": "continuous",
            "include_docs": "true",
            "heartbeat": int(self.heartbeat * 1000),
            "since": self.since,
        }
        # Identity: gzip-encoded continuous feeds stall on some servers.
        headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        # The store's client (thread-safe); the read timeout only has to outlast a heartbeat.
        timeout = httpx.Timeout(10.0, read=self.heartbeat * 5 + 5)
        # Clears made while the feed was not followed (before ``since``) count too.
        self._see_watermark(self.store._watermark("changes"))
        client = self.store.client
        with client.stream("GET", "_changes", params=params, headers=headers, timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                raise StoreUnavailable(f"_changes answered HTTP {response.status_code}", store=_NAME, op="changes")
            self.connected.set()
            buffer = b""
            for chunk in response.iter_bytes():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip() and not self._handle(orjson.loads(line)):
                        return
                if len(buffer) > self.max_line_bytes:
                    raise StoreError(f"_changes line over {self.max_line_bytes} bytes", store=_NAME, op="changes")
                if self._stop.is_set():
                    return

    def _handle(self, change: Any) -> bool:
        """Apply one line of the feed; False when the feed says it ended."""
        if not isinstance(change, dict):
            return True
        if "last_seq" in change and "id" not in change:
            self.since = change["last_seq"]
            return False
        doc_id = change.get("id", "")
        seq = change.get("seq", self.since)
        self.counts["changes"] += 1
        if doc_id == WATERMARK_KEY and not change.get("deleted"):
            try:
                self._see_watermark(self.store._watermark_of(change.get("doc"), "changes"))
            except StoreError:
                self.counts["errors"] += 1
                log.exception("an unreadable clear watermark in the CouchDB feed; going on")
            self.since = seq
            return True
        if not isinstance(doc_id, str) or not doc_id.startswith(self.store.prefix):
            self.since = seq
            self.counts["skipped"] += 1
            return True
        try:
            if change.get("deleted"):
                now = self.clock.wall()
                key = doc_id[len(self.store.prefix) :]
                self.on_record(Record(key, {}, _EVICTION_VERSION, 0, now, now, now, True))
                self.counts["deletions"] += 1
            else:
                record = self.store._record(change.get("doc"))
                if cleared_by(record, self.watermark):
                    self.counts["skipped"] += 1  # a late write the clear covers: stores ignore it too
                else:
                    self.on_record(record)
                    self.counts["records"] += 1
        except Exception:
            self.counts["errors"] += 1
            log.exception("applying a CouchDB change failed; going on")
        self.since = seq
        return True

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
