"""The snapshot file of ``JsonFileStore``: one JSON-lines file, rewritten whole, atomically.

``write_snapshot`` writes a temp file in the same folder, fsyncs it,
``os.replace``s it over the old one and fsyncs the folder. A crash at any
moment leaves either the previous snapshot or the new one, never a mix.

File format, one JSON value per line (UTF-8)::

    {"format": "memsession-sessions", "version": 1, "count": N, "written": <wall seconds>,
     "cleared": <watermark>}
    {"k": key, "v": version, "o": origin, "c": created, "a": accessed,
     "e": expires | null, "x": deleted, "d": data,
     "s": stamps, "w": seen}                                N lines, one per record
    {"end": N}

``e`` is null when the session never expires; ``d`` is ``encode_data``'s JSON
(bytes tagged). ``s`` and ``w`` are the per-key stamps and the writers seen
(``persist.jsonstamps``), present only when the record has them. The trailer
makes truncation detectable. Expired records are left out when writing and
skipped when loading; expiries are kept exactly. ``cleared`` is the clear
watermark (``persist.base.Store.clear``); a file without it (written before
clears existed) reads as 0, never cleared. Adding it kept format version 1:
the live records a clear removed are not in the file (its tombstones are, as
a clear keeps them), so an older reader only misses the guard against late
writes. Adding ``s`` and ``w`` kept it too: a line without them (any file
written before) reads as every key at the record's own version, and an older
reader that ignores them loses only the key tombstones and which writers a
record reflects, never a session.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, NamedTuple

import orjson

from memsession.errors import RecordRefused, StoreCorrupt
from memsession.session import Record

from ..base import (
    after_clear,
    cleared_by,
    decode_data,
    json_default,
    jsonable_data,
    record_from_dict,
    record_to_dict,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "NAME",
    "Snapshot",
    "open_snapshot",
    "read_snapshot",
    "write_snapshot",
]

FORMAT = "memsession-sessions"
FORMAT_VERSION = 1
#: The store's name, in the errors about its file.
NAME = "jsonfile"
_CHUNK = 8192



def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(
    path: str, records: Iterable[Record], now: float, *, fsync: bool = True, cleared: int = 0
) -> int:
    """Atomically replace ``path`` with the unexpired ``records`` and the watermark ``cleared``.

    Returns how many records were written; live records ``cleared`` covers
    (``cleared_by``) are left out, tombstones kept.
    """
    live = [r for r in records if r.expires > now and not cleared_by(r, cleared)]
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(
                orjson.dumps(
                    {
                        "format": FORMAT,
                        "version": FORMAT_VERSION,
                        "count": len(live),
                        "written": now,
                        "cleared": cleared,
                    }
                )
                + b"\n"
            )
            dumps = orjson.dumps
            for start in range(0, len(live), _CHUNK):
                lines = []
                for record in live[start : start + _CHUNK]:
                    obj = record_to_dict(record)
                    obj["d"] = jsonable_data(record.data, record.flat)
                    lines.append(dumps(obj, default=json_default))
                lines.append(b"")
                f.write(b"\n".join(lines))
            f.write(orjson.dumps({"end": len(live)}) + b"\n")
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        _fsync_dir(folder)
    return len(live)


class Snapshot(NamedTuple):
    """An open snapshot file: its header's watermark and its records, streamed."""

    #: The clear watermark (0: never cleared).
    cleared: int
    #: The unexpired records the watermark does not cover; reading them to the end closes the file.
    records: Iterator[Record]


def open_snapshot(
    path: str, now: float, *, max_line_bytes: int = 8 << 20,
    on_refused: Callable[[RecordRefused], None] | None = None,
) -> Snapshot:
    """Read a snapshot's header now and its records as they are iterated.

    A well-formed record the record rule refuses (``persist.base.make_record``:
    a version out of range, a NaN, data nested too deep...) is skipped and
    handed to ``on_refused``; the others load.

    Raises ``StoreCorrupt`` naming the file and the line when anything is
    wrong (bad header, other format version, bad record, missing trailer,
    count mismatch), the header's faults at once; ``FileNotFoundError`` if
    there is no file.
    """
    f = open(path, "rb")  # noqa: SIM115 - the records iterator owns it and closes it
    try:
        header_line = f.readline(max_line_bytes + 1)
        if not header_line:
            raise StoreCorrupt(path, "file is empty (no header line)", store=NAME)
        try:
            header = orjson.loads(header_line)
        except orjson.JSONDecodeError as exc:
            raise StoreCorrupt(path, f"line 1: header is not JSON ({exc})", store=NAME) from exc
        if type(header) is not dict or header.get("format") != FORMAT:
            raise StoreCorrupt(path, f"line 1: not a {FORMAT} file", store=NAME)
        if header.get("version") != FORMAT_VERSION:
            raise StoreCorrupt(
                path,
                f"line 1: format version {header.get('version')!r}; this memsession reads {FORMAT_VERSION}",
                store=NAME,
            )
        cleared = header.get("cleared", 0)
        if type(cleared) is not int or cleared < 0:
            raise StoreCorrupt(path, f"line 1: clear watermark {cleared!r} is not an int >= 0", store=NAME)
    except BaseException:
        f.close()
        raise
    return Snapshot(cleared, _records(f, path, header.get("count"), cleared, now, max_line_bytes, on_refused))


def read_snapshot(path: str, now: float, *, max_line_bytes: int = 8 << 20) -> Iterator[Record]:
    """The unexpired records of a snapshot file its watermark does not cover, streamed (see ``open_snapshot``)."""
    yield from open_snapshot(path, now, max_line_bytes=max_line_bytes).records


def _records(
    f: IO[bytes], path: str, count: Any, cleared: int, now: float, max_line_bytes: int,
    on_refused: Callable[[RecordRefused], None] | None,
) -> Iterator[Record]:
    with f:
        seen = 0
        lineno = 1
        loads = orjson.loads
        while True:
            line = f.readline(max_line_bytes + 1)
            lineno += 1
            if not line:
                raise StoreCorrupt(path, f"truncated: ends after {seen} of {count} records", store=NAME)
            if not line.endswith(b"\n"):
                if len(line) > max_line_bytes:
                    raise StoreCorrupt(path, f"line {lineno}: longer than {max_line_bytes} bytes", store=NAME)
                raise StoreCorrupt(path, f"truncated: line {lineno} is incomplete", store=NAME)
            try:
                obj = loads(line)
                if type(obj) is dict and "end" in obj:
                    break
                data = obj["d"]
                # The record rule's shape (``make_record``): a record it refuses is skipped, not the file.
                record = record_from_dict(obj, data if b'"$' not in line else decode_data(data, line))
            except RecordRefused as exc:
                seen += 1
                if on_refused is not None:
                    on_refused(exc)
                continue
            except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
                raise StoreCorrupt(path, f"line {lineno}: bad record ({exc})", store=NAME) from exc
            seen += 1
            # Belt and braces: a file never holds what a clear covers, unless edited by hand.
            kept = after_clear(record, cleared)
            if kept is not None and kept.expires > now:
                yield kept
        if obj.get("end") != seen or count != seen:
            raise StoreCorrupt(
                path, f"line {lineno}: trailer says {obj.get('end')!r} records, found {seen}", store=NAME
            )
        if f.read(1):
            raise StoreCorrupt(path, f"data after the trailer on line {lineno}", store=NAME)

