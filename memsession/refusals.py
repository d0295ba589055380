"""Logging refused requests so that a flood of them costs a handful of log lines.

Every server loop (the hub's ROUTER, the sidecar's ack socket, its HTTP
status server) counts what it refuses in its stats; the log only has to say
that refusals happen and what the last one looked like. The 1st, 10th, 100th,
... refusal of a counter is logged at WARNING, every other one at DEBUG: no
clock to keep, and a million bad requests write seven warnings.
"""

from __future__ import annotations

import logging

__all__ = ["MAX_DETAIL", "log_refusal"]


def _is_power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1


#: Characters of a refusal's detail that are logged (it may quote a 64 KiB request line).
MAX_DETAIL = 200


def log_refusal(logger: logging.Logger, what: str, count: int, detail: object) -> None:
    """Log the ``count``-th refusal counted as ``what``: WARNING at 1, 10, 100, ..., DEBUG otherwise."""
    detail = str(detail)
    if len(detail) > MAX_DETAIL:
        detail = detail[:MAX_DETAIL] + "..."
    if _is_power_of_ten(count):
        logger.warning("%s (%d so far; the others are logged at debug): %s", what, count, detail)
    else:
        logger.debug("%s (%d so far): %s", what, count, detail)
