"""The record merge of one session's copies: concurrent changes of different keys survive, clears converge."""

from __future__ import annotations

from typing import Any

import msgpack

from memsession.changes import merge_records, record_change, seen_of, stamps_of
from memsession.session import Record, cleared_by, prepare_data

KEY = "5e" * 32
IDLE_TIMEOUT = 600.0
MAX_BYTES = 1 << 16


def state(record: Record | None) -> tuple[Any, ...] | None:
    """Everything a replica holds of the session, the short forms of ``stamps`` and ``seen`` spelled out."""
    if record is None:
        return None
    return (
        record.key, record.data, record.version, record.origin, record.created, record.accessed,
        record.expires, record.deleted, dict(stamps_of(record)), dict(seen_of(record)), record.partial,
    )


def merged(old: Record | None, new: Record, cleared: int = 0) -> Record | None:
    """``merge_records`` with None read as "``old`` stays as it is"."""
    result = merge_records(old, new, cleared=cleared)
    return old if result is None else result


# -- the examples ---------------------------------------------------------------------------------------


def write_on(
    base: Record | None, version: int, values: dict[str, str], removed: tuple[str, ...] = (), origin: int = 1
) -> tuple[Record, Record]:
    """A change on ``base`` at ``(version, origin)``, at wall time ``version``: (held, delta)."""
    data = {**(base.data if base is not None else {}), **values}
    for name in removed:
        data.pop(name, None)
    copy, size, flat = prepare_data(data, MAX_BYTES)
    return record_change(base, KEY, copy, values, removed, version=version, origin=origin, wall=float(version),
                         idle_timeout=IDLE_TIMEOUT, max_age=None, flat=flat, size=size)


def test_two_replicas_set_different_keys_concurrently_and_both_keep_both() -> None:
    base, _ = write_on(None, 1, {"user": "ann"})
    one, one_delta = write_on(base, 2, {"cart": "1"})
    two, two_delta = write_on(base, 2, {"theme": "dark"}, origin=2)
    assert two_delta.partial and one_delta.partial
    after_one, after_two = merged(one, two_delta), merged(two, one_delta)
    assert after_one is not None and after_one.data == {"user": "ann", "cart": "1", "theme": "dark"}
    assert state(after_one) == state(after_two)


def test_a_copy_kept_through_a_clear_ends_as_one_that_never_held_what_the_clear_covers() -> None:
    """Origin 1 sets ``a`` at 2 and ``b`` at 3; a clear at 2 comes from a replica that saw only version 1.

    The writer keeps its copy through the clear (its newest change, 3, is newer); another replica
    merged the change at 3 and refused the one at 2 (the clear covers it). Each merging the other's
    copy ends with the same session, without ``a``, and so does a replica that had no copy: the
    clear drops what it covers from the copy merged into, even when what arrives brings nothing
    newer, as much as from what arrives.
    """
    created, _ = write_on(None, 1, {})
    with_a, _ = write_on(created, 2, {"a": "a=2.1"})
    writer, delta_b = write_on(with_a, 3, {"b": "b=3.1"})
    other = merged(created, delta_b)
    assert other is not None and other.data == {"b": "b=3.1"}
    watermark = 2
    assert not cleared_by(writer, watermark) and not cleared_by(other, watermark)
    from_other = merged(writer, other, watermark)
    from_writer = merged(other, writer, watermark)
    fresh = merged(None, writer, watermark)
    assert from_other is not None and from_writer is not None and fresh is not None
    assert from_other.data == from_writer.data == fresh.data == {"b": "b=3.1"}
    assert state(from_other) == state(from_writer) == state(fresh)
    assert from_other.size == len(msgpack.packb(from_other.data))


def test_a_clear_drops_a_covered_key_tombstone_from_a_copy_that_brings_nothing_newer() -> None:
    created, _ = write_on(None, 1, {"a": "a=1.1"})
    removed, _ = write_on(created, 2, {}, ("a",))
    held, delta = write_on(removed, 3, {})
    assert dict(stamps_of(held)) == {"a": (2, 1)}
    other = merged(created, delta)
    assert other is not None
    cleaned = merged(held, other, 2)
    assert cleaned is not None and dict(stamps_of(cleaned)) == {}
    assert state(cleaned) == state(merged(other, held, 2))
