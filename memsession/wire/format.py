"""The bus wire format, frame by frame (version 5). msgpack only; no pickle.

Every message is exactly two ZeroMQ frames::

    frame 0  topic    4 bytes: b"ms5" + one op byte
                      ("ms" is the protocol's name, "5" its version; sockets
                      subscribe to ``PROTOCOL_FAMILY`` so that a frame of another
                      version reaches the decoder, which rejects it whole as
                      ``"other version"``, counted and logged)
    frame 1  payload  one msgpack array; its layout depends on the op

Version 5 differs from version 4 in what a sidecar joined to other hosts
tells its workers: a hub beat names the partitions it can't vouch for, and
DROP forgets every copy in partitions whose changes were missed. A version-4
worker would refuse both and serve copies another host may have ended, so
the versions refuse each other's frames.

Version 4 differed from version 3 in what a delta carries: its ``base``, what
the copy it was made on had ``seen``, in place of the ``partial`` flag's
``true``. A receiver whose copy does not reflect that base takes the delta's
keys but not its ``seen`` (``memsession.changes``), so a copy that missed an
earlier change never passes for the newest. A version-3 delta carries no
base to check, so the versions refuse each other's frames.

Version 3 differed from version 2 in what a record carries: sessions now merge
key by key (``memsession.changes``), so a SET and every record list carry
the per-key ``stamps``, what the record has ``seen`` and whether it is a
``partial`` delta, and a one-key change travels as a delta of that one key
instead of the whole session. A version-2 process would take such a delta
for the whole session and drop every key it does not carry, and its own
whole sessions carry no stamps to merge by, so the versions refuse each
other's frames. Version 2 differed from version 1 (memsession 0.1) in
what a ``key`` is: the session key ``session_key(sid)``, the SHA-256 of the
id in hex, never the id.

Times travel as wall-clock seconds (float) except ``sent_us`` (int wall
microseconds at publish, for lag measurement). ``version`` is the writer's
hybrid-logical-clock int (as is a clear's watermark: at most ``2**63 - 1``,
what every store can keep), ``rorigin`` the record's origin id (a touch or a
hub relay republishes a record written by someone else, so it differs from
the publisher's ``origin``). ``data`` is itself a msgpack ``bin`` holding the
session's live top-level keys (all of them, or a delta's), so a receiver knows
its serialized size without re-packing. The three fields of the merge:

``stamps``   a map ``{name: [version, origin]}`` of the stamps the receiver
             can't infer: every key whose stamp differs from the record's own
             ``(version, rorigin)``, and every removed key (a key tombstone:
             stamped but not in ``data``). Every key of ``data`` not in the map
             carries ``(version, rorigin)``; so a delta that sets keys and
             removes none sends an empty map (1 byte). The receiver rebuilds
             ``Record.stamps``: None for an empty map, else every key of
             ``data`` at ``(version, rorigin)`` updated with the map.
``seen``     nil (``Record.seen`` None: ``{rorigin: version}``) or
             ``[[origin, version], ...]``, per writer the newest of its
             changes merged in (read-your-writes), at most
             ``admission.MAX_SEEN_ENTRIES`` writers (none: a record that
             vouches for no change, a delta taken as all there is).
``partial``  ``false`` for a whole record; for a delta (the keys one change
             touched, which a receiver merges into a copy it holds and never
             serves alone) its base ``[[origin, version], ...]``: per writer
             the newest change the copy it was made on had merged in, at most
             ``MAX_SEEN_ENTRIES`` (``Record.base``; empty: it needs none).

Bus messages (PUB -> hub XSUB -> XPUB -> SUB). Every payload starts with the
publisher's stream header ``origin, epoch, seq, sent_us``:

    op  name       payload after the header
    s   SET        key, version, rorigin, created, accessed, expires, data,
                   stamps, seen, partial
    d   DESTROY    key, version, rorigin, created, accessed, expires
                   (a tombstone: ``expires`` is when the tombstone lapses;
                   it ends every key, so it carries no stamps)
    t   TOUCH      key, version, rorigin, accessed, expires
                   (same version, later access; receivers holding that exact
                   version slide its expiry, others ignore it)
    i   INVALIDATE key, version, rorigin, deleted
                   (``invalidate`` mode: receivers drop any older copy and
                   read through on next use)
    c   CLEAR      version
                   (every live session whose last write has a version at
                   or below ``version`` is gone, everywhere; receivers keep
                   it as a watermark and refuse live records at or below it,
                   and drop the keys stamped at or below it from newer ones;
                   tombstones are untouched and always merged)
    x   DROP       partitions
                   (the hub's, in a sidecar joined to other hosts: changes
                   to sessions in these partitions, ``memsession.partitions``
                   as 32 big-endian bytes, were missed and can't be named;
                   receivers drop every live copy there and read each
                   through when next used; tombstones stay)
    h   HEARTBEAT  (nothing; ``seq`` is the last data seq sent)
    H   HUB BEAT   [suspect]  (``origin`` is the hub id, ``epoch`` the hub's
                   epoch: a new hub id means the hub restarted, whatever
                   the epochs compare, since they follow the wall clock;
                   ``suspect``, if present, the partitions
                   (``memsession.partitions``) whose copies the hub can't
                   vouch for now, as 32 big-endian bytes: its feed of other
                   hosts' changes is silent, so a worker checks each hit
                   there with the hub, which reads the store)
    y   HELLO      nonce  (``seq`` 0; a joining process waits for its own
                   hello to come back, proving its subscription is live)
    r   RESYNC     target origin  (``seq`` 0; the hub saw a gap in that
                   origin's stream and asks it to push its state)
    b   BATCH      [[op, fields...], ...]
                   (several data messages in one frame, numbered ``seq``,
                   ``seq + 1``, ...; each item is a one-letter op from s d t i
                   c x followed by that op's fields. A publisher batches only
                   what is already queued when it sends, so batching never
                   delays a message; under load it saves a ZeroMQ message and
                   a decode call per change on every hop.)

s, d, t, i, c and x are data messages: each publisher numbers them 1, 2, 3... per
``(origin, epoch)``; the epoch is random per bus start, so a restarted process
starts a new stream. Subscribers track the last seq per origin; a jump is a gap.

A one-key change of a 1 KB session is a SET of about 176 bytes, topic and
payload (``python -m bench.replication --bytes`` measures what the bus
sends): the topic and stream header (~35), the key as its 64 hex digits (66),
version and rorigin (18), the three times (27), the one key's value, an
empty stamps map and nil (2), and the base, one writer for a session one
worker wrote (~20). Version 2 sent the whole session: 1.1 KB.

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
    P  PUSH        rid, [record, ...], cleared, stream
                   a worker hands the hub its state and clear watermark; the
                   hub relays on the bus whatever changed its replica.
                   ``stream`` is [origin, epoch, seq], the pusher's stream
                   when it took the state (every change it had numbered up
                   to ``seq`` is in it), on the last PUSH of a push and nil
                   on the ones before; a PUSH of two fields has none
    W  WRITE       rid, [record, ...]          (``invalidate`` mode: values go to the hub
                                                here, acknowledged before the INVALIDATE is
                                                published; not relayed)
    A  ACK         rid, changed
    Q  STATS       rid
    T  STATS REPLY rid, {name: number or {name: number}}

where ``record`` is ``[key, version, rorigin, created, accessed, expires,
deleted, data, stamps, seen, partial]``, the last four as in a SET (a
tombstone's: the empty map packed as bin, ``{}``, nil and false).
A snapshot carries the hub's records as they are, partial ones too (a worker
merges one only into a copy it holds); ``wire.record_lists`` cuts a list to
what one frame may carry.

Decoding checks the topic, the frame count, every size limit (``Limits``) and
every field's type before building anything. Each op bounds how many array
items its payload may build (a BATCH ``max_batch`` changes, a record list
``max_records`` records, and a frame that carries records room for
``max_stamps`` stamps and ``seen`` entries more over all of them; one
record's stamps map holds at most ``max_items`` entries, its ``seen``
``MAX_SEEN_ENTRIES``), so decoding work never grows with a frame beyond what
its op carries; no msgpack ext type is accepted. Records obey the record rule's shape (``memsession.admission``;
whether the stamps fit the record is judged where it is merged, by
``RecordRules.admit``). Whatever is wrong, the decoder raises ``WireError``
with a short ``reason``; receivers count and log it and carry on. In a record
list (CHUNK, PUSH, WRITE) a refused record is left out and counted in
``Reply.refused``; the others are taken.
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
    "DROP",
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

PROTOCOL = b"ms5"
#: What sockets subscribe to: every version, so another one is seen and counted, not filtered out unseen.
PROTOCOL_FAMILY = b"ms"

SET = "s"
DESTROY = "d"
TOUCH = "t"
INVALIDATE = "i"
CLEAR = "c"
DROP = "x"
HEARTBEAT = "h"
HUB_BEAT = "H"
HELLO = "y"
RESYNC = "r"
BATCH = "b"
DATA_OPS = frozenset((SET, DESTROY, TOUCH, INVALIDATE, CLEAR, DROP))
BUS_OPS = frozenset((SET, DESTROY, TOUCH, INVALIDATE, CLEAR, DROP, HEARTBEAT, HUB_BEAT, HELLO, RESYNC, BATCH))

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
