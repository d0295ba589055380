"""The sidecar shape: workers join a ``memsession sidecar`` started on its own.

Same host (ipc sockets in the sidecar's runtime dir)::

    memsession sidecar --store postgresql://app@db/app --runtime-dir /run/memsession &
    MEMSESSION_RUNTIME_DIR=/run/memsession \\
        gunicorn -c examples/sidecar/gunicorn.external.conf.py examples.sidecar.app:app

Another host (tcp with CURVE keys; see ``examples/sidecar/README.md``)::

    MEMSESSION_PUBLISH=tcp://10.0.0.5:5561 MEMSESSION_SUBSCRIBE=tcp://10.0.0.5:5562 \\
    MEMSESSION_REQUESTS=tcp://10.0.0.5:5563 MEMSESSION_KEYS=/etc/memsession/keys \\
        gunicorn -c examples/sidecar/gunicorn.external.conf.py examples.sidecar.app:app
"""

import os

from memsession.service.gunicorn import GunicornHooks

bind = os.environ.get("BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WORKERS", "4"))

if os.environ.get("MEMSESSION_PUBLISH"):
    bus = {
        "publish": os.environ["MEMSESSION_PUBLISH"],
        "subscribe": os.environ["MEMSESSION_SUBSCRIBE"],
        "requests": os.environ["MEMSESSION_REQUESTS"],
        "keys": os.environ.get("MEMSESSION_KEYS"),
    }
else:
    bus = {"runtime_dir": os.environ.get("MEMSESSION_RUNTIME_DIR", "")}

GunicornHooks(
    bus=bus,
    bus_options={"heartbeat": 0.5, "silence": 1.6, "request_timeout": 1.0},
    # MEMSESSION_ACKNOWLEDGED=1: a request that changed its session returns only once the
    # sidecar has it in the database (over tcp, also set MEMSESSION_ACK to the sidecar's --ack).
    acknowledged=os.environ.get("MEMSESSION_ACKNOWLEDGED") == "1",
    ack_endpoint=os.environ.get("MEMSESSION_ACK") or None,
).install(globals())
