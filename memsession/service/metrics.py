"""The sidecar's stats as Prometheus metrics: one catalog of families, and its text exposition.

Every family is listed here with its type and help, and is served from the
first scrape on, before anything happened (counters at 0), so that rules and
dashboards never meet a missing series. The names follow Prometheus' naming
conventions: counters end in ``_total``, times are seconds, moments are Unix
timestamps (``..._timestamp_seconds``, 0 meaning "never" / "none", as each
help says) rather than ages, and identifiers travel as labels of the
``memsession_info`` gauge, never as values.

A stat the sidecar has but ``/metrics`` leaves out is named in
``NOT_EXPORTED`` with the reason; the tests hold both lists to a real
sidecar's stats. A component that does not run (``--no-ack``, a store without
refusal counts) reads as zeros: the family stays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..clock import version_wall_ms

__all__ = ["DROP_REASONS", "FAMILIES", "FEDERATED", "NOT_EXPORTED", "Family", "prometheus_text"]

#: Why the hub drops a frame or request (``dropped`` in its stats): each is served from the start at 0.
DROP_REASONS = ("malformed", "other version", "malformed request", "not a request", "seq jump", "error")

#: The prefix of the stats a sidecar has only when it joins other hosts (``--host-name``).
FEDERATED = "federation."

#: Stats ``/metrics`` leaves out, and why (the tests check that nothing else is missing).
NOT_EXPORTED = {
    "uptime": "memsession_start_time_seconds says it (uptime is time() minus it)",
    "persist.last_flush_age_s": "memsession_persist_last_flush_timestamp_seconds says it",
    "persist.unwritten_age_s": "memsession_persist_oldest_unwritten_timestamp_seconds says it",
    "persist.cleared": "the same clear watermark as the hub's (memsession_clear_watermark_timestamp_seconds)",
    "persist.unwritten_at_exit": "only set when the writer stops, after the last scrape",
}

#: One family's samples from the stats: ``(name suffix + labels, value)`` pairs.
Sampler = Callable[[dict[str, Any]], list[tuple[str, float]]]


@dataclass(frozen=True, slots=True)
class Family:
    """A metric family: its name (after ``memsession_``), type, help and the stats it is read from."""

    name: str
    kind: str  # "counter", "gauge" or "summary"
    help: str
    sources: tuple[str, ...]  # dotted paths into the stats
    sample: Sampler


def _get(stats: dict[str, Any], path: str) -> Any:
    value: Any = stats
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
        return value
    return 0  # absent (a component that does not run) or None (never / none): see each help


def _family(name: str, kind: str, source: str, help: str, convert: Callable[[Any], float] = _number) -> Family:
    return Family(name, kind, help, (source,), lambda stats: [("", convert(_get(stats, source)))])


def counter(name: str, source: str, help: str) -> Family:
    return _family(f"{name}_total", "counter", source, help)


def gauge(name: str, source: str, help: str, convert: Callable[[Any], float] = _number) -> Family:
    return _family(name, "gauge", source, help, convert)


def _flag(value: Any) -> float:
    return 1 if value else 0


def _version_time(version: Any) -> float:
    """A hybrid-clock version as the Unix time it was issued; 0 for none."""
    return version_wall_ms(version) / 1000 if isinstance(version, int) and version > 0 else 0


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _info(stats: dict[str, Any]) -> list[tuple[str, float]]:
    labels = {"epoch": stats.get("epoch", 0), "role": stats.get("role", "hub"), "store": stats.get("store", "")}
    return [("{" + ",".join(f'{k}="{_label(v)}"' for k, v in labels.items()) + "}", 1)]


def _dropped(stats: dict[str, Any]) -> list[tuple[str, float]]:
    dropped = {reason: 0 for reason in DROP_REASONS}
    dropped.update(stats.get("dropped") or {})
    return [(f'{{reason="{_label(reason)}"}}', _number(count)) for reason, count in sorted(dropped.items())]


def _lag(stats: dict[str, Any]) -> list[tuple[str, float]]:
    # The quantiles cover the hub's recent window; with nothing received yet there are none
    # (rather than a made-up 0). Every change received is one observation.
    out = [(f'{{quantile="{q}"}}', stats[key] / 1000)
           for q, key in (("0.5", "lag_ms_p50"), ("0.99", "lag_ms_p99"))
           if isinstance(stats.get(key), (int, float))]
    return out + [("_sum", _number(stats.get("lag_ms_sum")) / 1000), ("_count", _number(stats.get("received")))]


FAMILIES: tuple[Family, ...] = (
    Family("info", "gauge", "The sidecar's role, store kind and hub epoch (a new epoch at every start); always 1.",
           ("epoch",), _info),
    gauge("start_time_seconds", "started", "Unix time the hub started."),
    # -- sessions in the hub
    gauge("sessions", "sessions", "Live sessions the hub holds."),
    gauge("tombstones", "tombstones", "Destroyed sessions the hub remembers until their tombstones lapse."),
    gauge("sessions_limit", "maxsize", "Most live sessions the hub holds (--maxsize); past it the least "
          "recently used is evicted."),
    counter("evicted", "evicted", "Sessions evicted from the hub past its limit."),
    counter("pruned", "pruned", "Expired sessions and lapsed tombstones dropped from the hub's memory."),
    counter("read_backs", "read_backs", "Requests for a session the hub no longer held, handed to a store read."),
    counter("read_back_refused", "read_back_refused", "Requests for a session the hub no longer held, left "
            "unanswered because the store reads were full (the worker asks again)."),
    counter("refused", "refused", "Records from the bus or workers the record rule kept out (each skipped alone)."),
    # -- replication
    gauge("publisher_streams", "streams", "Publisher streams (worker processes) the hub hears; one silent "
          "for --forget-after is forgotten."),
    counter("publishers_forgotten", "forgotten", "Publisher streams forgotten after --forget-after of silence."),
    counter("received", "received", "Changes received from publishers (repeats not counted)."),
    counter("applied", "applied", "Changes (received, pushed or written) that changed the hub's replica."),
    counter("ignored", "ignored", "Changes that changed nothing: the replica already had them or newer."),
    counter("duplicates", "duplicates", "Changes received again on their stream."),
    counter("gaps", "gaps", "Gaps found in a publisher's numbered stream; each asks the publisher for a repair."),
    counter("resyncs_sent", "resyncs_sent", "Repair requests sent to publishers after a gap or a jump."),
    counter("pushes", "pushes", "Pushes of their sessions received from publishers (repairs, hub restarts)."),
    counter("pushed_records", "pushed_records", "Sessions received in pushes."),
    counter("snapshots", "snapshots", "Snapshots served to joining or repairing workers."),
    counter("gets", "gets", "Single-session reads served to workers."),
    counter("writes", "writes", "Session writes received as requests (invalidate mode: the value goes to "
            "the hub, only the key on the bus)."),
    counter("relayed", "relayed", "Changes the hub republished on its own stream (from pushes and writes)."),
    counter("clears", "clears", "Clears (every session ended) the hub applied."),
    # -- several hosts (--host-name)
    counter("remote_changes", "remote_changes", "Changes other hosts made to the shared store, applied here."),
    counter("remote_invalidated", "remote_invalidated", "Copies dropped here because another host changed "
            "the session (read again from the store when next used)."),
    counter("remote_stale_reads", "remote_stale_reads", "Copies from before another host's change (a store "
            "read under way, a worker's push) answered or written but not kept."),
    # (only with --host-name; zeros without: see FEDERATED)
    gauge("feed_silent", "federation.silent", "1 while the change feed of the other hosts has not reached "
          "the log's end for a while (hits are checked against the store), else 0.", _flag),
    counter("feed_silences", "federation.silences", "Times the change feed of the other hosts went silent."),
    counter("feed_gaps", "federation.gaps", "Changes of other hosts missed and not nameable (every copy "
            "here read again)."),
    counter("feed_batches", "federation.batches", "Batches of other hosts' changes handed to the hub."),
    counter("feed_changes", "federation.changes", "Other hosts' changes handed to the hub."),
    counter("feed_overflows", "federation.overflows", "Seconds the change feed waited for the hub to take "
            "what it had read."),
    gauge("feed_positions", "federation.positions", "Hosts (or store cursors) the change feed keeps a "
          "position for."),
    gauge("clear_watermark_timestamp_seconds", "cleared", "Unix time of the last clear: sessions written "
          "before it are gone; 0 when there was none.", _version_time),
    Family("dropped_total", "counter", "Frames and requests the hub dropped unread, by reason.",
           ("dropped",), _dropped),
    Family("replication_lag_seconds", "summary", "Seconds from a publisher's send to the hub's receipt, per "
           "change received; quantiles over the latest 2048-4096, none before the first.",
           ("lag_ms_p50", "lag_ms_p99", "lag_ms_sum", "received"), _lag),
    # -- the store and the write-behind queue
    gauge("persist_failing", "persist.failing", "1 while the store fails (writes retried with backoff, "
          "/health answers 503), else 0.", _flag),
    gauge("persist_depth", "persist.depth", "Sessions waiting to be written to the store."),
    gauge("persist_inflight", "persist.inflight", "Sessions in the batch being written now."),
    gauge("persist_limit", "persist.limit", "Most sessions that wait for the store (--queue-limit); past it "
          "the queue overflows."),
    gauge("persist_oldest_unwritten_timestamp_seconds", "persist.unwritten_since", "Unix time the oldest "
          "change not yet in the store was queued; 0 when everything is written."),
    gauge("persist_last_flush_timestamp_seconds", "persist.last_flush_at", "Unix time the store last took "
          "a batch; 0 before the first."),
    gauge("persist_rewrite_due", "persist.rewrite_due", "1 while everything in memory is to be rewritten "
          "to the store (after an overflow), else 0.", _flag),
    gauge("persist_clear_owed", "persist.clear_due", "1 while a clear waits to be applied to the store "
          "(until then it may return sessions the clear ended), else 0.", _flag),
    gauge("persist_warm_loaded", "persist.warm_loaded", "Sessions loaded from the store at start."),
    counter("persist_queued", "persist.queued", "Sessions queued for the store (more changes to one that "
            "waits are coalesced)."),
    counter("persist_coalesced", "persist.coalesced", "Changes merged into a session already waiting."),
    counter("persist_stale", "persist.stale", "Changes not queued: what waited held them already, or a "
            "clear covers them."),
    counter("persist_saved", "persist.saved", "Session records the store took."),
    counter("persist_batches", "persist.batches", "Batches the store took."),
    counter("persist_failed_batches", "persist.failed_batches", "Batches the store failed to take "
            "(requeued and retried)."),
    counter("persist_write_errors", "persist.write_errors", "Store errors while writing (each retried)."),
    counter("persist_rejected", "persist.rejected", "Records the store refused as such (a constraint, a "
            "size); never retried."),
    counter("persist_store_refused", "persist.store_refused", "Stored records the record rule kept out "
            "when they were read from the store."),
    counter("persist_overflows", "persist.overflows", "Times the queue overflowed its limit (a rewrite "
            "from memory follows)."),
    counter("persist_overflowed", "persist.overflowed", "Live records dropped from the queue by overflows "
            "(the rewrite brings them)."),
    counter("persist_deferred", "persist.deferred", "Live changes not queued while a rewrite was due "
            "(it brings them)."),
    counter("persist_lost", "persist.lost", "Tombstones dropped because tombstones alone filled the queue."),
    counter("persist_rewrites", "persist.rewrites", "Rewrites of every session in memory to the store."),
    counter("persist_rewritten", "persist.rewritten", "Records written by rewrites."),
    counter("persist_clears", "persist.clears", "Clears the store applied."),
    counter("persist_clear_errors", "persist.clear_errors", "Clears the store failed to apply (retried)."),
    counter("persist_purged", "persist.purged", "Expired sessions purged from the store."),
    counter("persist_purge_errors", "persist.purge_errors", "Purges of the store that failed."),
    # -- store reads for sessions the hub no longer holds
    gauge("read_back_waiting", "read_back.waiting", "Requests waiting for a store read."),
    gauge("read_back_limit", "read_back.limit", "Most requests that may wait for a store read."),
    counter("read_back_queued", "read_back.queued", "Store reads queued."),
    counter("read_back_joined", "read_back.joined", "Requests that joined a read of the same session "
            "already queued."),
    counter("read_back_full", "read_back.full", "Store reads refused because the read queue was full."),
    counter("read_back_loaded", "read_back.loaded", "Store reads done."),
    counter("read_back_found", "read_back.found", "Store reads that found the session."),
    counter("read_back_errors", "read_back.errors", "Store reads that failed."),
    # -- acknowledged writes (zero with --no-ack)
    counter("ack_asked", "ack.asked", "Acknowledgement requests: a worker waits until the store holds its writes."),
    counter("ack_acked", "ack.acked", "Acknowledgement requests answered: stored."),
    counter("ack_refused", "ack.refused", "Acknowledgement requests answered: the store refused a record."),
    counter("ack_timed_out", "ack.timed_out", "Acknowledgement requests answered: not stored in time."),
    counter("ack_malformed", "ack.malformed", "Malformed acknowledgement requests dropped."),
    # -- this HTTP status server
    counter("http_served", "http.served", "Requests this status server served."),
    counter("http_malformed", "http.malformed", "Malformed, unknown or too slow requests it refused."),
    counter("http_over_capacity", "http.over_capacity", "Connections it turned away (503) past "
            "--http-max-connections."),
)


def _format(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def prometheus_text(stats: dict[str, Any], prefix: str = "memsession") -> str:
    """``stats`` (a sidecar's, or a hub's: what is absent reads as zero) in the Prometheus text format."""
    lines: list[str] = []
    for family in FAMILIES:
        name = f"{prefix}_{family.name}"
        lines.append(f"# HELP {name} {_help(family.help)}")
        lines.append(f"# TYPE {name} {family.kind}")
        lines.extend(f"{name}{suffix} {_format(value)}" for suffix, value in family.sample(stats))
    return "\n".join(lines) + "\n"
