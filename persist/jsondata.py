"""Session data as JSON for the stores that keep JSON: tags for what JSON lacks, checked on the way back.

Session data is JSON-like plus ``bytes``. ``encode_data`` / ``jsonable_data``
turn bytes into ``{"$bytes": "<base64>"}`` and wrap a user dict that would read
as such a tag as ``{"$dict": ...}``, so every value round-trips exactly; for
servers that read JSON numbers as doubles, ``safe_ints`` adds ``$int`` and
``$float``. ``decode_data`` undoes it on stored (untrusted) JSON: a tag that
does not hold what it says, or data that is not an object, is a
``RecordRefused`` (a ``ValueError``) and nothing else.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from memsession.admission import MAX_DEPTH
from memsession.errors import RecordRefused
from memsession.session import SessionData, is_flat

__all__ = ["STORE_MAX_ITEMS", "decode_data", "encode_data", "json_default", "jsonable_data"]

_BYTES = "$bytes"
_DICT = "$dict"


def json_default(value: Any) -> Any:
    """``default=`` for orjson: bytes become a ``$bytes`` tag."""
    if type(value) is bytes:
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not session data")


_SAFE_INT = (1 << 53) - 1
_INT = "$int"
_FLOAT = "$float"
_TAGS = (_BYTES, _DICT, _INT, _FLOAT)


def _is_tag_like(value: dict[str, Any]) -> bool:
    return len(value) == 1 and next(iter(value)) in _TAGS


def _escape(value: Any, safe_ints: bool) -> Any:
    kind = type(value)
    if kind is dict:
        out = {k: _escape(v, safe_ints) for k, v in value.items()}
        return {_DICT: out} if _is_tag_like(value) else out
    if kind is list or kind is tuple:
        return [_escape(v, safe_ints) for v in value]
    if safe_ints:
        if kind is int and not -_SAFE_INT <= value <= _SAFE_INT:
            return {_INT: str(value)}
        if kind is float and value.is_integer():
            return {_FLOAT: repr(value)}
    return value


def jsonable_data(data: SessionData, flat: bool | None = None, *, safe_ints: bool = False) -> Any:
    """Session data ready for ``orjson.dumps(..., default=json_default)``.

    Flat data (the common case) is returned as is, or wrapped when it would
    read as a tag; only nested data is walked. ``safe_ints`` is for servers
    that parse JSON numbers as doubles (JavaScript): integers beyond 2**53
    become ``{"$int": "<decimal>"}`` and whole floats (``1.0``, ``-0.0``),
    which such a server would write back as integers, ``{"$float": "1.0"}``.
    """
    if safe_ints:
        return _escape(data, True)
    if flat is None:
        flat = is_flat(data)
    if not flat:
        return _escape(data, False)
    return {_DICT: data} if _is_tag_like(data) else data


def encode_data(data: SessionData, flat: bool | None = None) -> bytes:
    """Session data as JSON bytes (UTF-8), bytes values tagged; see the module docstring."""
    return orjson.dumps(jsonable_data(data, flat), default=json_default)


#: Longest decimal string a ``$int`` tag may hold: a 64-bit int has at most 20 digits and a sign.
_MAX_INT_DIGITS = 21
_MAX_FLOAT_TEXT = 40
#: Most values in one stored session's data: a store serves every process, whatever its own bound.
STORE_MAX_ITEMS = 8 * 8192


def _tag_int(text: Any) -> int:
    if type(text) is not str or not 0 < len(text) <= _MAX_INT_DIGITS:
        raise ValueError("$int tag does not hold a decimal string of a 64-bit int")
    return int(text)  # ValueError if not decimal; the range is the data rule's


def _tag_float(text: Any) -> float:
    if type(text) is not str or not 0 < len(text) <= _MAX_FLOAT_TEXT:
        raise ValueError("$float tag does not hold a short decimal string")
    return float(text)  # ValueError if not a number; finiteness is the data rule's


def _tag_bytes(text: Any) -> bytes:
    if type(text) is not str:
        raise ValueError("$bytes tag does not hold a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"$bytes tag is not base64 ({exc})") from None


def _unescape(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is dict:
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        if len(value) == 1:
            if _BYTES in value:
                return _tag_bytes(value[_BYTES])
            if _DICT in value:
                inner = value[_DICT]
                if type(inner) is not dict:
                    raise ValueError("$dict tag does not hold an object")
                return {k: _unescape(v, depth + 1) for k, v in inner.items()}
            if _INT in value:
                return _tag_int(value[_INT])
            if _FLOAT in value:
                return _tag_float(value[_FLOAT])
        return {k: _unescape(v, depth + 1) for k, v in value.items()}
    if kind is list:
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        return [_unescape(v, depth + 1) for v in value]
    return value


def decode_data(value: Any, raw: bytes | str | None = None) -> SessionData:
    """Undo ``encode_data`` on already-parsed JSON; ``RecordRefused`` (a ``ValueError``, only) if it is not session data.

    ``raw`` (the JSON text it came from) lets the common case, data with no
    tag anywhere, skip the walk. The result is a dict, whatever the tags
    said (a top-level ``{"$int": ...}`` is not session data); whether its
    values obey the data rule is ``make_record``'s check.
    """
    if type(value) is not dict:
        raise RecordRefused("session data is not a JSON object")
    if isinstance(raw, (bytes, bytearray)):
        if b'"$' not in raw:
            return value
    elif isinstance(raw, str) and '"$' not in raw:
        return value
    if len(value) == 1 and next(iter(value)) in (_BYTES, _INT, _FLOAT):
        raise RecordRefused("session data is a tagged scalar, not an object")
    try:
        out = _unescape(value, 0)
    except RecursionError:
        raise RecordRefused("session data nested too deep") from None
    except ValueError as exc:
        raise RecordRefused(f"session data: {exc}") from None
    if type(out) is not dict:
        raise RecordRefused("session data is not a JSON object")
    return out


