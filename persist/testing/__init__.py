"""The store contract suite: every adapter, ours or yours, passes the same tests.

Subclass ``StoreContract`` in a pytest module and provide one fixture,
``make_store``: a callable returning a new store over the same backing data
each time it is called within a test, with that data empty at the start of
each test (a fresh file, table or database)::

    import pytest
    from persist.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        def make_store(self, tmp_path):
            return lambda: MyStore(tmp_path / "sessions.db")

Stores the suite makes are closed at the end of each test. Reopening (for
the durability checks, ``clear``'s watermark among them) closes a store and
calls ``make_store`` again.

The suite is put together from one mixin per topic: ``round_trips``,
``version_guard`` (the merge of whole records, tombstones and expiry
included), ``per_key`` (deltas, key tombstones, stamps and ``seen``,
concurrent changes of one session), ``lifecycle`` (batches, concurrency,
reopening, closed stores) and ``clear``; ``fixtures`` holds the fixtures they
share and ``records`` the record makers.
"""

from __future__ import annotations

from .clear import ClearContract
from .fixtures import StoreFixtures
from .lifecycle import LifecycleContract
from .per_key import PerKeyContract
from .records import T0, make_test_delta, make_test_record
from .round_trips import RoundTripContract
from .version_guard import VersionGuardContract

__all__ = ["T0", "StoreContract", "make_test_delta", "make_test_record"]


# pytest collects the tests of the last base first: the bases are listed in
# reverse so the suite runs in reading order, round trips first, clear last.
class StoreContract(
    ClearContract, LifecycleContract, PerKeyContract, VersionGuardContract, RoundTripContract, StoreFixtures
):
    """What every ``persist.base.Store`` must do. Subclasses provide ``make_store``."""
