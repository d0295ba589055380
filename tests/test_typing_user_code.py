"""The README's snippets type-check under ``mypy --strict``, as a user's own code would.

The apps in ``tests/typing_apps`` use memsession the way the README shows.
memsession is checked as an installed package would be (``py.typed``;
``--follow-imports=silent``: its own modules are analysed for their types,
their internals not reported), so only the user's side counts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy comes with the test extra")

ROOT = Path(__file__).resolve().parent.parent
APPS = sorted((ROOT / "tests" / "typing_apps").glob("*_app.py"))


@pytest.mark.slow
def test_the_readmes_snippets_type_check_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
         "--cache-dir", str(tmp_path / "mypy-cache"), *map(str, APPS)],
        cwd=ROOT, env={"MYPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=240, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
