"""The bus wire format, frame by frame (version 2). msgpack only; no pickle.

Every message is exactly two ZeroMQ frames::

    frame 0  topic    4 bytes: b"ms2" + one op byte
                      ("ms" is the protocol's name, "2" its version; sockets
                      subscribe to ``PROTOCOL_FAMILY`` so that a frame of another
                      version reaches the decoder, which rejects it whole as
                      ``"other version"``, counted and logged)

Version 2 differs from version 1 (memsession 0.1) in what a ``key`` is: the
session key ``session_key(sid)``, the SHA-256 of the id in hex, never the id.
The frames are otherwise laid out as in version 1; a process of each would
look sessions up under different keys, so they refuse each other's frames.
    frame 1  payload  one msgpack array; its layout depends on the op

Times travel as wall-clock seconds (float) except ``sent_us`` (int wall
microseconds at publish, for lag measurement). ``version`` is the writer's
hybrid-logical-clock int (as is a clear's watermark: at most ``2**63 - 1``,
what every store can keep), ``rorigin`` the record's origin id (a touch or a
hub relay republishes a record written by someone else, so it differs from
the publisher's ``origin``). ``data`` is itself a msgpack ``bin`` holding the
session's dict, so a receiver knows its serialized size without re-packing.

Bus messages (PUB -> hub XSUB -> XPUB -> SUB). Every payload starts with the
publisher's stream header ``origin, epoch, seq, sent_us``:

    op  name       payload after the header
    s   SET        key, version, rorigin, created, accessed, expires, data
    d   DESTROY    key, version, rorigin, created, accessed, expires
                   (a tombstone: ``expires`` is when the tombstone lapses)
    t   TOUCH      key, version, rorigin, accessed, expires
                   (same version, later access; receivers holding that exact
                   version slide its expiry, others ignore it)
    i   INVALIDATE key, version, rorigin, deleted
                   (``invalidate`` mode: receivers drop any older copy and
                   read through on next use)
    c   CLEAR      version
                   (every live session whose last write has a version at
                   or below ``version`` is gone, everywhere; receivers keep
                   it as a watermark and refuse live records at or below it;
                   tombstones are untouched and always merged)
    h   HEARTBEAT  (nothing; ``seq`` is the last data seq sent)
    H   HUB BEAT   (nothing; ``origin`` is the hub id, ``epoch`` the hub's
                   epoch: a new hub id means the hub restarted, whatever
                   the epochs compare, since they follow the wall clock)
    y   HELLO      nonce  (``seq`` 0; a joining process waits for its own
                   hello to come back, proving its subscription is live)
    r   RESYNC     target origin  (``seq`` 0; the hub saw a gap in that
                   origin's stream and asks it to push its state)
    b   BATCH      [[op, fields...], ...]
                   (several data messages in one frame, numbered ``seq``,
                   ``seq + 1``, ...; each item is a one-letter op from s d t i
                   c followed by that op's fields. A publisher batches only
                   what is already queued when it sends, so batching never
                   delays a message; under load it saves a ZeroMQ message and
                   a decode call per change on every hop.)

s, d, t, i and c are data messages: each publisher numbers them 1, 2, 3... per
``(origin, epoch)``; the epoch is random per bus start, so a restarted process
starts a new stream. Subscribers track the last seq per origin; a jump is a gap.

Requests (DEALER -> hub ROUTER) and replies (ROUTER -> DEALER), same two
frames; ``rid`` is the requester's request id, echoed in every reply:

    S  SNAPSHOT    rid
    C  CHUNK       rid, [record, ...]          (0 or more, up to 1000 records)
    E  END         rid, hub_epoch, vector, chunks, records, cleared
                   ``vector`` is [[origin, epoch, seq], ...]: the last seq of
                   every stream the hub had applied when it cut the snapshot,
                   the hub's own stream (``hub_epoch``) last;
                   ``cleared`` the hub's clear watermark (0: never cleared)
    G  GET         rid, key
    R  RECORD      rid, record or nil
    P  PUSH        rid, [record, ...], cleared (a worker hands the hub its state and clear
                                                watermark; the hub relays on the bus whatever
                                                changed its replica)
    W  WRITE       rid, [record, ...]          (``invalidate`` mode: values go to the hub
                                                here, acknowledged before the INVALIDATE is
                                                published; not relayed)
    A  ACK         rid, changed
    Q  STATS       rid
    T  STATS REPLY rid, {name: number or {name: number}}

where ``record`` is ``[key, version, rorigin, created, accessed, expires,
deleted, data]``.

Decoding checks the topic, the frame count, every size limit (``Limits``) and
every field's type before building anything. Each op bounds how many array
items its payload may build (a BATCH ``max_batch`` changes, a record list
``max_records`` records), so decoding work never grows with a frame
beyond what its op carries; no msgpack ext type is accepted. Records obey
the record rule's shape (``memsession.admission``). Whatever is wrong, the
decoder raises ``WireError`` with a short ``reason``; receivers count and log
it and carry on. In a record list (CHUNK, PUSH, WRITE) a refused record is
left out and counted in ``Reply.refused``; the others are taken.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..errors import WireError

__all__ = [
    "ACK",
    "BATCH",
    "BUS_OPS",
    "CHUNK",
    "CLEAR",
    "DATA_OPS",
    "DESTROY",
    "END",
    "GET",
    "HEARTBEAT",
    "HELLO",
    "HUB_BEAT",
    "INVALIDATE",
    "PROTOCOL",
    "PROTOCOL_FAMILY",
    "topic_refusal",
    "PUSH",
    "RECORD",
    "REPLY_OPS",
    "REQUEST_OPS",
    "RESYNC",
    "SET",
    "SNAPSHOT",
    "STATS",
    "STATS_REPLY",
    "TOUCH",
    "WRITE",
    "Message",
    "Reply",
]

PROTOCOL = b"ms2"
#: What sockets subscribe to: every version, so another one is seen and counted, not filtered out unseen.
PROTOCOL_FAMILY = b"ms"

SET = "s"
DESTROY = "d"
TOUCH = "t"
INVALIDATE = "i"
CLEAR = "c"
HEARTBEAT = "h"
HUB_BEAT = "H"
HELLO = "y"
RESYNC = "r"
BATCH = "b"
DATA_OPS = frozenset((SET, DESTROY, TOUCH, INVALIDATE, CLEAR))
BUS_OPS = frozenset((SET, DESTROY, TOUCH, INVALIDATE, CLEAR, HEARTBEAT, HUB_BEAT, HELLO, RESYNC, BATCH))

SNAPSHOT = "S"
CHUNK = "C"
END = "E"
GET = "G"
RECORD = "R"
PUSH = "P"
WRITE = "W"
ACK = "A"
STATS = "Q"
STATS_REPLY = "T"
REQUEST_OPS = frozenset((SNAPSHOT, GET, PUSH, WRITE, STATS))
REPLY_OPS = frozenset((CHUNK, END, RECORD, ACK, STATS_REPLY))

def topic_refusal(topic: bytes) -> WireError:
    """Why a topic no op has is refused: an unknown op, another version (counted apart), or not ours at all."""
    if topic[:3] == PROTOCOL:
        return WireError("unknown op")
    if len(topic) == 4 and topic[:2] == PROTOCOL_FAMILY and topic[2:3].isdigit():
        return WireError(f"protocol version {topic[2:3].decode()}, not {PROTOCOL[2:].decode()}: a process of another "
                         "memsession release (upgrade every process together)", kind="other version")
    return WireError("unknown protocol or version")


_TOPICS = {op: PROTOCOL + op.encode() for op in BUS_OPS | REQUEST_OPS | REPLY_OPS}
_OPS = {topic: op for op, topic in _TOPICS.items()}


class Message(NamedTuple):
    """A decoded bus message. ``body`` depends on ``op`` (see the module docstring)."""

    op: str
    origin: int
    epoch: int
    seq: int
    sent_us: int
    body: Any


class Reply(NamedTuple):
    """A decoded request or reply from the DEALER/ROUTER channel."""

    op: str
    rid: int
    body: tuple[Any, ...]
    #: Records of a CHUNK, PUSH or WRITE the record rule refused and ``body`` leaves out.
    refused: int = 0
