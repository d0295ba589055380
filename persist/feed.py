"""A change feed: which sessions changed on other hosts, never what they hold.

Hosts that share one store learn of each other's writes through the store's
change log: per save, one ``Change`` per record written, numbered per host
(``seq``: 1, 2, 3, ... with no gaps), committed with the save itself, so a
change is in the feed exactly when it is in the store. A change carries the
key and the ``(version, origin)`` the stored record has now, whether it is a
tombstone, and for a clear its watermark; never session data: a follower
that wants the record reads it from the store, and one that already holds
something as new skips the read.

A follower hands changes over in host/seq order and keeps, per host, the
last seq it applied (``positions``), so a follower restarted from its
positions neither replays nor loses anything. A store that numbers its
changes its own way keeps its cursor among them as text (CouchDB's
``since``): a ``Position`` is an int seq or such a str, and
``position_fault`` says which are well formed. A skip in a host's numbering
(the log was pruned past where the follower stood, or a row is missing), or
a cursor the store no longer follows from, is reported through ``on_gap``:
the follower has missed changes it can't name and must read the store again
for that host's sessions: those of the partitions (``memsession.partitions``)
the gap names, or all of them when the store can't say which.

``change_fault`` is the check a follower runs on every change it reads,
whatever the store: what it reads came from a shared database.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Union, runtime_checkable

from memsession.record_shape import I64_MIN, MAX_VERSION, U64

__all__ = ["MAX_CURSOR", "MAX_HOST", "Change", "ChangeFeed", "Position", "change_fault", "host_fault",
           "position_fault"]

#: Longest host name (characters) a change log keeps.
MAX_HOST = 255
#: Longest store cursor (characters) a position may be: CouchDB's ``since`` grows with its shards.
MAX_CURSOR = 1 << 16
#: Where a feed stands for one name: the last seq (an int), or a store's own opaque cursor (a str).
Position = Union[int, str]
#: A session key as stores keep it: SHA-256 of the id, lowercase hex (``memsession.session.session_key``).
_KEY = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Change:
    """One record a host wrote (or, with ``key == ""``, one clear), as the change log numbered it.

    ``version``/``origin``/``deleted`` are the stored record's after the
    save; ``cleared`` is the clear's watermark (0 for a record).
    """

    key: str
    version: int
    origin: int
    deleted: bool
    cleared: int
    host: str
    seq: int

    @property
    def is_clear(self) -> bool:
        return self.key == ""


def host_fault(host: Any) -> str | None:
    """What is wrong with a host name (printable, 1 to ``MAX_HOST`` characters), or None."""
    if type(host) is not str or not 0 < len(host) <= MAX_HOST or not host.isprintable():
        return f"host is not a printable str of 1 to {MAX_HOST} characters"
    return None


def position_fault(name: Any, at: Any) -> str | None:
    """What is wrong with one entry of a feed's positions, or None.

    ``name`` is a host name (``host_fault``); ``at`` an int seq in ``[0, 2**63 - 1]`` or a
    cursor: printable ASCII, 1 to ``MAX_CURSOR`` characters.
    """
    fault = host_fault(name)
    if fault is not None:
        return fault
    if type(at) is int:
        return None if 0 <= at <= MAX_VERSION else "a seq is not an int in [0, 2**63 - 1]"
    if type(at) is not str or not 0 < len(at) <= MAX_CURSOR or not (at.isascii() and at.isprintable()):
        return f"a position is neither an int nor printable ASCII text of 1 to {MAX_CURSOR} characters"
    return None


def change_fault(
    key: Any, version: Any, origin: Any, deleted: Any, cleared: Any, host: Any, seq: Any
) -> str | None:
    """What is wrong with a change read from a log (never quoting the key), or None.

    A record's change has a 64-hex key, a version in ``(0, MAX_VERSION]``
    (0 only for a tombstone, as ``record_shape.field_fault`` allows) and no
    watermark; a clear's has key ``""``, version and origin 0, and a
    watermark in ``(0, MAX_VERSION]``.
    """
    fault = host_fault(host)
    if fault is not None:
        return fault
    if type(seq) is not int or not 0 < seq <= MAX_VERSION:
        return "seq is not an int in (0, 2**63 - 1]"
    if type(deleted) is not bool:
        return "deleted is not a bool"
    if type(version) is not int or type(origin) is not int or type(cleared) is not int:
        return "version, origin and cleared must be ints"
    if type(key) is not str:
        return "key is not a str"
    if key == "":
        if not 0 < cleared <= MAX_VERSION or version != 0 or origin != 0 or deleted:
            return "a clear is not (version 0, origin 0, live, watermark in (0, 2**63 - 1])"
        return None
    if _KEY.fullmatch(key) is None:
        return "key is not 64 lowercase hex digits"
    if not (0 < version <= MAX_VERSION or (version == 0 and deleted)):
        return "version is not an int in (0, 2**63 - 1]"
    if not I64_MIN <= origin <= U64:
        return "origin is not a 64-bit int"
    if cleared != 0:
        return "a record's change carries a watermark"
    return None


@runtime_checkable
class ChangeFeed(Protocol):
    """Follows the changes other hosts make to a shared store, in a thread of its own."""

    def start(
        self, on_changes: Callable[[list[Change]], Any],
        on_gap: Callable[[str, int, int, int | None], Any],
    ) -> None:
        """Begin following; raise (a ``StoreError``) at once if the feed can't be followed at all.

        ``on_changes`` gets each batch read, in host/seq order.
        ``on_gap(host, expected_seq, got_seq, partitions)`` is called, before
        the batch holding ``got_seq``, when that host's numbering skips:
        changes ``expected_seq`` to ``got_seq - 1`` are gone, so the caller
        has to read that host's sessions from the store again. ``partitions``
        is a mask (``memsession.partitions``) covering the partitions of those
        changes' keys (a session of any other partition missed nothing of
        that host's), or None, meaning every partition, when the store can't
        name them (a clear among them, a log made anew, a cursor lost). Both
        are called from the feed's thread; an exception they raise is logged
        and counted, and the feed goes on past the batch.
        """

    def stop(self) -> None:
        """Stop following and release the connection; returns promptly. Idempotent."""

    def positions(self) -> dict[str, Any]:
        """Per host, the last seq handed over (or skipped): what a restarted feed resumes from.

        Each value is a ``Position``: an int, or a str cursor of the store's (``position_fault``).
        """

    def caught_up_at(self) -> float | None:
        """When (``time.monotonic``) the feed last read from the store (rows or none, a heartbeat); None: not
        yet. A follower that can't reach the store stops moving it: it has gone silent. One that reads but
        is behind (its host is overloaded) is late, not silent: its lag is the cross-host latency."""

    def stats(self) -> dict[str, int]:
        """Counters: changes handed over, gaps, rows refused, errors, reconnects, ..."""
