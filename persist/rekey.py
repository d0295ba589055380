"""Moving records stored under raw session ids (memsession 0.1) to the ids' digests.

Since 0.2 a session is stored under ``session_key(sid)``, the SHA-256 of its
id, never the id. A store written by 0.1 holds rows keyed by the id itself; a
key shaped like an id (``session.legacy_key``) is such a row. ``rekey_store``
moves every one, through the ``Store`` protocol alone, so it is the same for
every adapter (a store of your own included):

* each legacy record is saved under its digest (merged as every save is: a
  copy already there keeps what is newer in it), then the legacy row is
  deleted;
* a crash in between leaves both, and the next run finishes the move (saving
  merges, so it is idempotent); several processes running it at once do the
  same work twice, never harm;
* rows the record rule refuses are not returned by ``load_all`` and stay as
  they are (they were unreadable before the move too), counted in the
  store's ``refused``.

Each adapter runs it when it opens, unless its marker says the store is
already done: PostgreSQL a comment on the table, CouchDB the local document
``_local/memsession-keys``; the JSON file is read whole anyway and is
rewritten at once if it held any. Sessions thus survive the upgrade; only
processes that have all been upgraded may share a store (an old one would
look sessions up by id).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

from memsession.session import Record, legacy_key

from .base import Store

__all__ = ["rekey_store", "rekeyed"]

log = logging.getLogger("memsession.persist")

#: Records moved per save and delete.
_PAGE = 500


def rekeyed(record: Record) -> Record | None:
    """``record`` under its id's digest if it is stored under a raw id, else None."""
    key = legacy_key(record.key)
    return None if key is None else replace(record, key=key)


def rekey_store(store: Store, page: int = _PAGE) -> int:
    """Move every record stored under a raw session id to the id's digest; return how many moved."""
    moved = 0
    batch: list[tuple[str, Record]] = []
    for record in store.load_all(-math.inf):
        new = rekeyed(record)
        if new is not None:
            batch.append((record.key, new))
            if len(batch) >= page:
                moved += _move(store, batch)
                batch = []
    if batch:
        moved += _move(store, batch)
    if moved:
        log.info("%s: moved %d sessions stored under their ids to the ids' SHA-256 digests", store.name, moved)
    return moved


def _move(store: Store, batch: list[tuple[str, Record]]) -> int:
    store.save([new for _, new in batch])  # first: a crash now leaves both, never neither
    store.delete([old for old, _ in batch])
    return len(batch)
