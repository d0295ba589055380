"""``scripts/bootstrap`` installs server software, never services left enabled at boot.

Installing redis-server, prometheus or postgresql with apt also enables its
service at boot; the tests only need the programs (they start throwaway
servers). bootstrap disables again the services of the packages it
installed and lists them in its cache folder; this checks each one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("MEMSESSION_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
             / "memsession")


def _enabled_at_boot(service: str) -> list[str]:
    """Where ``service`` is still set to start at boot: systemd's wants links, SysV start links."""
    found = [str(p) for p in Path("/etc/systemd/system").glob(f"*.wants/{service}.service")]
    for level in "2345":
        found += [str(p) for p in Path(f"/etc/rc{level}.d").glob(f"S[0-9][0-9]{service}")]
    return found


def test_services_bootstrap_installed_are_not_enabled_at_boot() -> None:
    listed = CACHE / "bootstrap-services"
    if not listed.exists():
        pytest.skip("scripts/bootstrap installed no server package with a service on this machine")
    services = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
    assert services
    for service in services:
        assert _enabled_at_boot(service) == [], service
