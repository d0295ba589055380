"""``memsession status``'s report (memsession.service.commands.format_status)."""

from __future__ import annotations

from typing import Any

import pytest

from memsession.service.commands import format_status

SIDECAR: dict[str, Any] = {
    "role": "sidecar",
    "epoch": 0xABC,
    "uptime": 12.0,
    "sessions": 3,
    "store": "postgres",
    "persist": {"failing": False, "depth": 0, "limit": 10, "saved": 5, "batches": 1},
}


def test_a_store_that_never_saw_a_clear_reports_none() -> None:
    report = format_status(SIDECAR, "ipc:///run/requests")
    assert "sidecar at ipc:///run/requests" in report
    assert "clear" not in report


def test_clears_and_the_watermark_are_reported() -> None:
    stats = {**SIDECAR, "cleared": 123, "persist": {**SIDECAR["persist"], "clears": 2}}
    report = format_status(stats, "ipc:///run/requests")
    assert "cleared      every session at or below version 123" in report
    assert "clears       2 clears applied to the store\n" in report + "\n"


def test_a_clear_the_store_still_owes_is_reported() -> None:
    stats = {**SIDECAR, "cleared": 456, "persist": {**SIDECAR["persist"], "clears": 1, "clear_due": 456}}
    assert "clears       1 clear applied to the store; one owed, watermark 456" in format_status(stats, "x")


def test_the_epoch_reads_as_in_the_json_output() -> None:
    report = format_status(SIDECAR, "x")
    assert f"epoch        {SIDECAR['epoch']}   " in report  # decimal, as ``--json`` prints it
    assert "abc" not in report


def _counted(n: int) -> dict[str, Any]:
    """Stats where every counter the report names with a noun is ``n``."""
    persist = {**SIDECAR["persist"], "depth": n, "saved": n, "batches": n, "overflows": n, "purged": n,
               "clears": n, "store_refused": n}
    return {**SIDECAR, "streams": n, "tombstones": n, "gaps": n, "refused": n, "persist": persist}


#: What the report says of each counter at 1 and at 2.
NOUNS = [
    ("1 publisher stream\n", "2 publisher streams\n"),
    ("1 tombstone\n", "2 tombstones\n"),
    ("1 gap,", "2 gaps,"),
    ("1 record from the bus", "2 records from the bus"),
    ("1 stored record\n", "2 stored records\n"),
    ("1 key waiting", "2 keys waiting"),
    ("1 record in 1 batch,", "2 records in 2 batches,"),
    ("1 overflow,", "2 overflows,"),
    ("1 clear applied", "2 clears applied"),
    ("1 expired session from", "2 expired sessions from"),
]


@pytest.mark.parametrize(("one", "two"), NOUNS)
def test_counts_are_singular_for_one_and_plural_otherwise(one: str, two: str) -> None:
    assert one in format_status(_counted(1), "x") + "\n"
    assert two in format_status(_counted(2), "x") + "\n"


def test_none_is_plural() -> None:
    report = format_status(_counted(0), "x")
    assert "0 tombstones" in report and "0 records in 0 batches" in report
