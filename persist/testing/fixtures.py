"""The fixtures every contract test takes: the store under test and a way to reopen it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ..base import Store

__all__ = ["StoreFixtures"]


class StoreFixtures:
    """``store`` and ``reopen`` over the ``make_store`` fixture a subclass provides."""

    @pytest.fixture
    def make_store(self) -> Callable[[], Store]:
        raise NotImplementedError("subclasses provide a make_store fixture")

    @pytest.fixture
    def _opened(self, make_store: Callable[[], Store]) -> Iterator[Callable[[], Store]]:
        made: list[Store] = []

        def opener() -> Store:
            store = make_store()
            made.append(store)
            return store

        yield opener
        for store in made:
            store.close()

    @pytest.fixture
    def store(self, _opened: Callable[[], Store]) -> Store:
        return _opened()

    @pytest.fixture
    def reopen(self, _opened: Callable[[], Store]) -> Callable[[Store], Store]:
        """Close a store and open a new one over the same data."""

        def reopen(store: Store) -> Store:
            store.close()
            return _opened()

        return reopen
