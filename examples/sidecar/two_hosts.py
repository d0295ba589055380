"""Two "hosts" on loopback: one sidecar on tcp with CURVE keys, two gunicorns joining it.

    python examples/sidecar/two_hosts.py [--store URL] [--demo]

What it starts, all on 127.0.0.1 and stopped by pid at the end:

* ``memsession keys``: a server pair, a client pair and the allowed-clients folder;
* ``memsession sidecar`` on ``tcp://127.0.0.1:{5561,5562,5563}`` requiring CURVE,
  with the JSON file store (``--store`` for PostgreSQL) and ``/health`` + ``/metrics``;
* "host A" and "host B": two gunicorn servers (2 workers each) using
  ``gunicorn.external.conf.py`` with the tcp endpoints and the client keys.

A session written through host A is read back through host B. With ``--demo``
it prints that and ``memsession status``, then stops; without, it serves until
Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=None, help="store URL (default: a JSON file in a temp dir)")
    parser.add_argument("--demo", action="store_true", help="show one session across both hosts, then stop")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="memsession-two-hosts-")
    keys = os.path.join(work, "keys")
    py = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1"}
    subprocess.run([py, "-m", "memsession", "keys", keys], check=True, env=env, stdout=subprocess.DEVNULL)
    ports = [free_port() for _ in range(4)]
    endpoints = [f"tcp://127.0.0.1:{p}" for p in ports[:3]]
    store = args.store or f"file://{work}/sessions.json"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen(
            [py, "-m", "memsession", "sidecar", "--store", store, "--publish", endpoints[0],
             "--subscribe", endpoints[1], "--requests", endpoints[2], "--keys", keys,
             "--http", f"127.0.0.1:{ports[3]}"], env=env, cwd=ROOT))
        wait_http(f"http://127.0.0.1:{ports[3]}/health")
        hosts = {}
        for name in ("A", "B"):
            port = free_port()
            host_env = {**env, "MEMSESSION_PUBLISH": endpoints[0], "MEMSESSION_SUBSCRIBE": endpoints[1],
                        "MEMSESSION_REQUESTS": endpoints[2], "MEMSESSION_KEYS": keys, "WORKERS": "2",
                        "BIND": f"127.0.0.1:{port}"}
            procs.append(subprocess.Popen(
                [py, "-m", "gunicorn", "-c", "examples/sidecar/gunicorn.external.conf.py",
                 "examples.sidecar.app:app"], env=host_env, cwd=ROOT))
            hosts[name] = f"http://127.0.0.1:{port}"
        for url in hosts.values():
            wait_http(url + "/me")
        print(f"sidecar tcp {endpoints} (CURVE keys in {keys}); metrics http://127.0.0.1:{ports[3]}/metrics")
        print(f"host A {hosts['A']}  host B {hosts['B']}")
        if not args.demo:
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
            return 0
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        opener.open(urllib.request.Request(hosts["A"] + "/login?user=alice", method="POST"), timeout=5).read()
        opener.open(urllib.request.Request(hosts["A"] + "/set?key=cart&value=3", method="POST"), timeout=5).read()
        seen = json.loads(opener.open(hosts["B"] + "/me", timeout=5).read())
        print(f"written on host A, read on host B (worker {seen['worker']}): {seen['session']}")
        subprocess.run([py, "-m", "memsession", "status", "--requests", endpoints[2], "--keys", keys], env=env, check=False)
        return 0 if seen["session"] == {"user": "alice", "cart": "3"} else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
