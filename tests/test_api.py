"""The public API is curated: what is exported is deliberate."""

from __future__ import annotations

import importlib

import memsession
import memsession.testing

CORE_API = {
    "BusError", "CacheClosed", "Clock", "Config", "ConfigError", "Eviction", "ExpiringLRUCache",
    "HybridClock", "InvalidSessionId", "MemsessionError", "Record", "SegmentedLRUCache", "SessionCache",
    "SessionDataError", "SessionDestroyed", "SessionError", "SessionTooLarge", "SignatureError",
    "StoreClosed", "StoreCorrupt", "StoreError", "StoreUnavailable", "SystemClock", "WireError",
    "is_valid_sid", "new_id",
}


def test_core_api_is_exported():
    assert CORE_API <= set(memsession.__all__)


def test_everything_in_all_exists_and_is_sorted():
    for name in memsession.__all__:
        assert hasattr(memsession, name), name
    assert memsession.__all__ == sorted(memsession.__all__)


def test_testing_helpers_are_public():
    assert set(memsession.testing.__all__) == {
        "EvictionModel", "FakeClock", "eviction_machine", "session_data", "session_ids",
    }


def test_every_error_is_a_memsession_error():
    for name in memsession.__all__:
        obj = getattr(memsession, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, memsession.MemsessionError), name


def test_importing_touches_no_zeromq():
    import sys

    importlib.reload(memsession)
    assert "zmq" not in sys.modules or "memsession.bus.zmq" in sys.modules
