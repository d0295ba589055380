"""The bounds a decoder enforces before it trusts a frame (``Limits``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..admission import MAX_ITEMS, MAX_SEEN_ENTRIES

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Upper bounds the decoder enforces before it trusts a frame."""

    #: Largest payload frame (bytes); snapshot chunks and pushes included.
    max_frame: int = 16 * 1024 * 1024
    #: Largest serialized session data (bytes).
    max_data: int = 1024 * 1024
    #: Longest key (characters).
    max_key: int = 256
    #: Most records in one chunk or push.
    max_records: int = 10_000
    #: Deepest nesting inside session data.
    max_depth: int = 32
    #: Most values in one session's data (``admission``): bounds the objects decoding a record builds.
    max_items: int = 8 * MAX_ITEMS
    #: Most changes in one BATCH message (senders put 256 in one).
    max_batch: int = 1024
    #: Per-key stamps and ``seen`` entries a frame may build beyond its records' fields, over all
    #: its records: what one record may hold (``max_items`` stamps, ``MAX_SEEN_ENTRIES`` writers), so
    #: a single record always fits; senders of record lists cut them to stay within it
    #: (``wire.record_lists``). With ``max_records`` it bounds the memory a refused frame costs.
    max_stamps: int = 8 * MAX_ITEMS + MAX_SEEN_ENTRIES


DEFAULT_LIMITS = Limits()
