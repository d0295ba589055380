"""``memsession status``'s report (memsession.service.commands.format_status)."""

from __future__ import annotations

from typing import Any

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
    assert "clears       2 applied to the store\n" in report + "\n"


def test_a_clear_the_store_still_owes_is_reported() -> None:
    stats = {**SIDECAR, "cleared": 456, "persist": {**SIDECAR["persist"], "clears": 1, "clear_due": 456}}
    assert "clears       1 applied to the store; one owed, watermark 456" in format_status(stats, "x")
