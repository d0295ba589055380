"""The built wheel is what the README installs: it carries the license, its data files, and works on its own.

Built from this checkout with pip (build isolation: the build backend the
project names comes from the package index), installed with ``--no-deps``
into a folder of its own, imported and run from there, never from the
checkout.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=240)
    (built,) = out.glob("memsession-*.whl")
    return built


def test_the_wheel_ships_the_license_and_every_data_file(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    licenses = [n for n in names if n.endswith("/licenses/LICENSE")]
    assert licenses, names
    assert zipfile.ZipFile(wheel).read(licenses[0]) == (ROOT / "LICENSE").read_bytes()
    for data in ("memsession/py.typed", "persist/py.typed", "persist/schema.sql", "memsession/service/status.html"):
        assert data in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata


def test_the_installed_wheel_imports_and_runs_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
                    "--target", str(target), str(wheel)], check=True, capture_output=True, timeout=120)
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    probe = ("import memsession, persist, memsession.contrib.asgi, memsession.service.status_page as page;"
             "print(memsession.__file__); print(persist.__file__); print(len(page.__file__))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60, check=True)
    assert all(line.startswith(str(target)) for line in result.stdout.splitlines()[:2]), result.stdout
    cli = subprocess.run([sys.executable, "-m", "memsession", "--help"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert cli.returncode == 0 and "sidecar" in cli.stdout, cli.stdout + cli.stderr
