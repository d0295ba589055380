"""The JSON-file adapter: sessions in memory, snapshotted to one JSON-lines file.

``JsonFileStore`` (``store``) holds the sessions and writes them out with
``write_snapshot`` and reads them back with ``open_snapshot``
(``snapshot``, where the file format is documented line by line).
"""

from __future__ import annotations

from .snapshot import FORMAT, FORMAT_VERSION, Snapshot, open_snapshot, read_snapshot, write_snapshot
from .store import JsonFileStore

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "JsonFileStore",
    "Snapshot",
    "open_snapshot",
    "read_snapshot",
    "write_snapshot",
]
