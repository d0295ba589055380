"""A change log's row as a follower reads it: checked whole, then one ``Change`` per record.

A row (``persist.postgres.changelog``) numbers its records ``first_seq`` to
``seq`` and lists their keys (a text, a key a line), versions, origins and
tombstone flags (arrays) in that many entries; a clear is a row of one seq, no records and a
watermark. What comes from the shared database is checked here before any of
it is believed: a row that breaks the layout (its arrays left out by the
server for being too long or unequal, a length that does not match its seqs,
a first seq past its last) can't say which sessions it changed, so the
follower takes its seqs for a gap; a record that breaks ``change_fault`` is
skipped alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..feed import Change, change_fault
from .changelog import ROW_CHANGES

__all__ = ["LogRow", "read_row"]


@dataclass(frozen=True, slots=True)
class LogRow:
    """What a readable row brought: its first seq, its good changes, and why each bad record was skipped."""

    first: int
    changes: list[Change]
    faults: list[str]


def read_row(host: str, seq: int, first: Any, keys: Any, versions: Any, origins: Any, deleted: Any,
             cleared: Any) -> LogRow | str:
    """The row's changes (``LogRow``), or what makes the whole row unreadable (never quoting a key).

    ``host`` and ``seq`` are already known to be a str and an int.
    """
    if type(first) is not int or not 0 < first <= seq:
        return "the row's first seq is not an int in (0, seq]"
    if type(cleared) is not int:
        return "the row's watermark is not an int"
    arrays = (versions, origins, deleted)
    if type(keys) is not str or not all(type(array) is list for array in arrays):
        return f"the row holds more than {ROW_CHANGES} records, or arrays of unequal lengths"
    keys = keys.split("\n") if keys else []
    count = seq - first + 1
    if cleared != 0:
        if keys or any(arrays) or count != 1:
            return "a clear's row lists records or spans more than one seq"
        fault = change_fault("", 0, 0, False, cleared, host, seq)
        return fault if fault is not None else LogRow(first, [Change("", 0, 0, False, cleared, host, seq)], [])
    if not len(keys) == len(versions) == len(origins) == len(deleted) == count:
        return "the row's arrays don't hold one record per seq"
    changes: list[Change] = []
    faults: list[str] = []
    for at, key, version, origin, gone in zip(range(first, seq + 1), keys, versions, origins, deleted):
        fault = change_fault(key, version, origin, gone, 0, host, at)
        if fault is None:
            changes.append(Change(key, version, origin, gone, 0, host, at))
        else:
            faults.append(fault)
    return LogRow(first, changes, faults)
