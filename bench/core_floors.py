"""Floors for ``bench core``: parts of a get or a set that any design keeping the same promises must pay.

Each is timed the same way as the operations it bounds (``core.best_of``),
so a target below a floor is shown to be out of reach, and a floor far
below its operation shows how much is the design's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

from memsession import session_key
from memsession.session import Record, checked_key, copy_data, prepare_packed

Loop = Callable[[Sequence[str]], None]


def get_floor(store: dict[str, Record]) -> Loop:
    """The least any get keyed by a digest of the id that returns a copy can do: hash, one dict lookup, copy."""

    def run(ks: Sequence[str], key: Any = session_key, held: Any = store, copy: Any = copy_data) -> None:
        for k in ks:
            copy(held[key(k)])

    return run


def clock_reads(ks: Sequence[str], clock: Any = monotonic) -> None:
    """One clock reading per item: what every get of an expiring cache pays to tell whether it expired."""
    for _ in ks:
        clock()


def set_floors(data: dict[str, Any], max_bytes: int, max_items: int) -> dict[str, Loop]:
    """Two parts of every ``set``: the id checked and hashed; the data checked, copied and packed."""

    def hash_id(ks: Sequence[str], check: Any = checked_key) -> None:
        for k in ks:
            check(k)

    def pack(ks: Sequence[str], prepare: Any = prepare_packed, d: Any = data) -> None:
        for _ in ks:
            prepare(d, max_bytes, max_items)

    return {"set id": hash_id, "set pack": pack}
