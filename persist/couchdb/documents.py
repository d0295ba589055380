"""A session as a CouchDB document, and back: the document format of ``CouchStore``.

A session document::

    {"_id": "<prefix><key>", "_rev": "...", "type": "memsession",
     "data": {...},            encode_data with safe_ints: exact through JavaScript servers too
     "version": "<decimal>",   64-bit ints as strings: JSON numbers may be doubles
     "origin": "<decimal>",
     "created": 1763900000.123, "accessed": ..., "expires": ...,   wall seconds;
                                                  no "expires" when it never expires
     "deleted": false,         our tombstone (a live CouchDB document)
     "stamps": {"<key>": ["<version>", "<origin>"]},
     "seen": {"<origin>": "<version>"}}

``stamps`` and ``seen`` are the record's per-key stamps and the writers it
reflects, numbers as text (``persist.jsonstamps``); each is absent when the
record has none, as in every document written before records carried them,
which therefore reads as every key at the document's own version.
"""

from __future__ import annotations

from typing import Any

from memsession.errors import RecordRefused, StoreError
from memsession.session import Record

from ..base import decode_data, jsonable_data, make_record
from ..jsonstamps import seen_from_json, seen_to_json, stamps_from_json, stamps_to_json
from .database import NAME

__all__ = ["doc_record", "session_doc"]


def session_doc(record: Record, prefix: str) -> dict[str, Any]:
    """``record`` as a document (no ``_rev``) whose id is ``prefix`` and its key."""
    doc: dict[str, Any] = {
        "_id": prefix + record.key,
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
    if record.stamps is not None:
        doc["stamps"] = stamps_to_json(record.stamps, text=True)
    if record.seen is not None:
        doc["seen"] = seen_to_json(record.seen, text=True)
    return doc


def doc_record(doc: Any, prefix: str) -> Record:
    """The record of a stored document: ``RecordRefused`` if the record rule refuses it, ``StoreError`` if it is none."""
    try:
        doc_id = doc["_id"]
        if not doc_id.startswith(prefix):
            raise ValueError(f"the id lacks the prefix {prefix!r}")
        version, origin = doc["version"], doc["origin"]
        if type(version) is not str or type(origin) is not str:
            raise ValueError("version and origin must be decimal strings")
        return make_record(
            doc_id[len(prefix) :],
            decode_data(doc["data"]),
            int(version),
            int(origin),
            doc["created"],
            doc["accessed"],
            doc.get("expires"),
            doc.get("deleted", False),
            stamps_from_json(doc.get("stamps")),
            seen_from_json(doc.get("seen")),
        )
    except RecordRefused:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # No id in the message: session ids must not reach logs.
        raise StoreError(f"a CouchDB document is not a session: {exc}", store=NAME, op="load") from exc
