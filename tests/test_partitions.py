"""Partitions of the key space: every key falls in one, and masks name sets of them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsession import new_id, session_key
from memsession.partitions import ALL, PARTITIONS, covers, mask_of, partition_of


def test_a_session_key_falls_in_the_partition_of_its_first_byte() -> None:
    key = session_key(new_id())
    assert partition_of(key) == bytes.fromhex(key[:2])[0]
    seen = {partition_of(session_key(new_id())) for _ in range(5000)}
    assert len(seen) > PARTITIONS * 0.95  # SHA-256 spreads them


@given(st.text(max_size=80))
def test_any_string_falls_in_one_partition_and_always_the_same(key: str) -> None:
    partition = partition_of(key)
    assert 0 <= partition < PARTITIONS and partition_of(key) == partition
    assert covers(ALL, key) and not covers(0, key)
    assert covers(mask_of([partition]), key)


def test_a_mask_names_only_real_partitions() -> None:
    assert mask_of([]) == 0 and mask_of(range(PARTITIONS)) == ALL
    for bad in (-1, PARTITIONS):
        with pytest.raises(ValueError):
            mask_of([bad])
