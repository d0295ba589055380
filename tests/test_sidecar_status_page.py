"""The status page at ``/`` of the sidecar's HTTP server, in a real headless Chromium.

A real sidecar process serves it; a real worker (``SessionCache`` on the ZeroMQ
bus) writes sessions while the page is open, and the page must show them and
the writes per second by itself, fetching nothing but its own origin, with no
script error. A screenshot lands in the test's ``tmp_path``. Without Chromium
the browser test skips (fails in CI, where scripts/bootstrap installs it).
"""

from __future__ import annotations

import fnmatch
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tomllib

from memsession import SessionCache, ZmqBus
from memsession.session import new_id
from tests.browser import Chromium
from tests.servers import free_port
from tests.sidecars import SidecarProcess, wait_until

pytestmark = [pytest.mark.zmq, pytest.mark.timeout(120)]


@pytest.fixture
def sidecar() -> Iterator[tuple[SidecarProcess, str]]:
    """A sidecar with ``--http``, and the base URL of its status server."""
    with tempfile.TemporaryDirectory(prefix="ms-page-store-") as store_dir:
        port = free_port()
        process = SidecarProcess(f"file://{store_dir}/sessions.json", "--heartbeat", "0.2",
                                 "--http", f"127.0.0.1:{port}")
        with process, httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as http:
            # /health answers 503 until the hub thread first publishes its stats (within a second).
            wait_until(lambda: http.get("/health").status_code == 200, 10, "/health to answer 200")
            yield process, f"http://127.0.0.1:{port}"


def test_the_page_is_one_self_contained_html_file(sidecar: tuple[SidecarProcess, str]) -> None:
    _, base = sidecar
    with httpx.Client(base_url=base, trust_env=False, timeout=5) as http:
        page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    assert "<title>memsession sidecar status</title>" in html and '<html lang="en">' in html
    # Nothing to load from elsewhere: no external script, style, image or font, no absolute URL.
    assert "http://" not in html and "https://" not in html and "@import" not in html
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", html)
    assert references == ["data:,", "/health"], references  # the empty icon, and the link in <noscript>
    assert re.findall(r'fetch\("([^"]*)"', html) == ["/health"]
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "'unsafe-inline'" not in policy  # the inline script and style are allowed by hash only


def test_the_page_and_every_other_data_file_of_the_packages_is_in_the_wheel() -> None:
    """setuptools puts in the wheel only the non-Python files ``package-data`` names."""
    root = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "service/status.html" in {str(p.relative_to(root / "memsession"))
                                     for p in (root / "memsession").rglob("*.html")}
    for package in ("memsession", "persist"):
        for path in (root / package).rglob("*"):
            if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
                name = str(path.relative_to(root / package))
                assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns.get(package, [])), name


def test_the_page_shows_the_sessions_and_writes_of_a_real_worker(
    chromium: str, sidecar: tuple[SidecarProcess, str], tmp_path: Path,
) -> None:
    process, base = sidecar

    def number(element: str) -> float | None:
        text = browser.evaluate(f"document.getElementById({element!r}).textContent")
        try:
            return float(text.replace(",", ""))
        except ValueError:
            return None  # "-": no answer yet, or no rate before the second answer

    with Chromium(chromium) as browser:
        for domain in ("Page", "Runtime", "Network", "Log"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=f"{base}/")
        wait_until(lambda: browser.evaluate("document.title") == "memsession sidecar status", 20,
                   "the page to load")
        # The page fetches /health by itself: the first answer fills it in.
        wait_until(lambda: number("sessions") == 0, 20, "the page to show 0 live sessions")
        assert browser.evaluate("document.getElementById('store-state').textContent") == "ok"

        written = 0
        with SessionCache(bus=ZmqBus(runtime_dir=process.runtime_dir, heartbeat=0.2, silence=0.7,
                                     request_timeout=3.0), touch_interval=3600) as cache:

            def write_a_few_and_look() -> bool:
                nonlocal written
                for _ in range(5):
                    cache.set(new_id(), {"n": written})
                    written += 1
                return (number("writes-rate") or 0) > 0

            # Writing while the page refreshes: its rate must come off zero.
            wait_until(write_a_few_and_look, 30, "the page to show a writes-per-second rate above 0")
            wait_until(lambda: number("sessions") == written, 20, f"the page to show {written} live sessions")
            assert (number("publishers") or 0) >= 1
            points = browser.evaluate("document.getElementById('spark-line').getAttribute('points')")
            heights = [float(point.split(",")[1]) for point in points.split()]
            assert min(heights) < 39, f"the sparkline shows no write: {points}"  # 39 is its zero line
            shot = browser.screenshot(tmp_path / "status.png")
        assert shot.read_bytes().startswith(b"\x89PNG")

        urls = [params["request"]["url"] for method, params in browser.events if method == "Network.requestWillBeSent"]
        assert urls and all(url.startswith(f"{base}/") or url.startswith("data:") for url in urls), urls
        assert f"{base}/health" in urls
        errors = [params for method, params in browser.events
                  if method == "Runtime.exceptionThrown"
                  or (method == "Log.entryAdded" and params["entry"]["level"] == "error")
                  or (method == "Runtime.consoleAPICalled" and params["type"] == "error")]
        assert not errors, errors
