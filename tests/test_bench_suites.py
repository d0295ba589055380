"""Every benchmark suite the runner lists imports (a broken import would only show in a full run)."""

from __future__ import annotations

import importlib

import pytest

from bench.__main__ import LONG_RUNNING, SUITES


@pytest.mark.parametrize("name", SUITES + LONG_RUNNING)
def test_the_suite_imports_and_has_a_main(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    assert callable(module.main)
