"""A record's per-key stamps and ``seen`` as JSON, for the stores that keep JSON, checked on the way back.

``Record.stamps`` (key -> ``(version, origin)``) is kept as an object of
two-element arrays, ``{"cart": [version, origin]}``; ``Record.seen`` (origin ->
version) as an object keyed by the origin in decimal, ``{"7": version}``. Both
are absent (None) in their short form, which is also how rows written before
records carried them read back: every key at the record's own ``(version,
origin)``, no key removed, only the writer itself seen.

Versions and origins are 64-bit; a server that reads JSON numbers as doubles
(CouchDB's JavaScript) keeps them exactly only as text, so ``text=True``
writes every number as a decimal string. Decoding takes either form. What is
not one of them is a ``RecordRefused`` (a ``ValueError``); whether the stamps
fit the record (every key stamped, none later than the record) is
``memsession.admission.stamps_fault``'s check, which ``persist.base.make_record``
runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from memsession.errors import RecordRefused

__all__ = ["seen_from_json", "seen_to_json", "stamps_from_json", "stamps_to_json"]

#: A 64-bit int in decimal: at most 20 digits and a sign; no leading zeros, so one number has one spelling.
_DECIMAL = re.compile(r"0|-?[1-9][0-9]{0,19}")


def _number(value: int, text: bool) -> int | str:
    return str(value) if text else value


def stamps_to_json(stamps: Mapping[str, tuple[int, int]] | None, *, text: bool = False) -> dict[str, Any] | None:
    """``{key: [version, origin]}``, numbers as decimal strings with ``text``; None stays None."""
    if stamps is None:
        return None
    return {key: [_number(version, text), _number(origin, text)] for key, (version, origin) in stamps.items()}


def seen_to_json(seen: Mapping[int, int] | None, *, text: bool = False) -> dict[str, Any] | None:
    """``{"<origin>": version}``, versions as decimal strings with ``text``; None stays None."""
    if seen is None:
        return None
    return {str(origin): _number(version, text) for origin, version in seen.items()}


def _stored_int(value: Any, what: str) -> int:
    if type(value) is int:
        return value
    if type(value) is str and _DECIMAL.fullmatch(value):
        return int(value)
    raise RecordRefused(f"{what} is not an integer")


def stamps_from_json(value: Any) -> dict[str, tuple[int, int]] | None:
    """Inverse of ``stamps_to_json`` on stored (untrusted) JSON; ``RecordRefused`` if it is not one."""
    if value is None:
        return None
    if type(value) is not dict:
        raise RecordRefused("stamps are not a JSON object")
    out: dict[str, tuple[int, int]] = {}
    for key, stamp in value.items():
        if type(stamp) is not list or len(stamp) != 2:
            raise RecordRefused("a stamp is not a [version, origin] pair")
        out[key] = (_stored_int(stamp[0], "a stamp's version"), _stored_int(stamp[1], "a stamp's origin"))
    return out


def seen_from_json(value: Any) -> dict[int, int] | None:
    """Inverse of ``seen_to_json`` on stored (untrusted) JSON; ``RecordRefused`` if it is not one."""
    if value is None:
        return None
    if type(value) is not dict:
        raise RecordRefused("seen is not a JSON object")
    out: dict[int, int] = {}
    for origin, version in value.items():
        if not _DECIMAL.fullmatch(origin):
            raise RecordRefused("a seen origin is not an integer in decimal")
        out[int(origin)] = _stored_int(version, "a seen version")
    return out
