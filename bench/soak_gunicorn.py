"""gunicorn config of the soak benchmark: 4 sync workers recycled every ~200 requests, hooks run a sidecar.

``MEMSESSION_STORE`` names the sidecar's store; ``BENCH_SOAK_ACKNOWLEDGED=1``
makes every save wait until the sidecar has stored it.
"""

import os

from memsession.service.gunicorn import GunicornHooks

workers = 4
worker_class = "sync"
max_requests = 200
max_requests_jitter = 50

GunicornHooks(store=os.environ["MEMSESSION_STORE"],
              acknowledged=os.environ.get("BENCH_SOAK_ACKNOWLEDGED") == "1").install(globals())
