"""The hub: its pure state (merge, snapshots, resync, prune) and its runner, CLI and key handling."""

from __future__ import annotations

import os
import stat

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memsession import wire
from memsession.errors import BusError, ConfigError
from memsession.hub import Hub, HubConfig, HubState, merge_into, query_snapshot, query_stats
from memsession.security import CurveClient, CurveServer, client_policy, generate_keys, server_policy
from memsession.service.cli import main
from memsession.session import Record
from memsession.testing import FakeClock

NOW = 1_700_000_000.0


def rec(key="k", version=10, origin=1, data=None, accessed=NOW, expires=NOW + 100, deleted=False):
    return Record(key, {} if deleted else (data or {"v": version}), version, origin, NOW, accessed, expires, deleted)


@pytest.fixture
def state():
    return HubState(clock=FakeClock(wall=NOW), hub_id=99, epoch=5)


def test_merge_rule_matches_the_cache():
    replica: dict[str, Record] = {}
    assert merge_into(replica, rec(version=10), NOW)
    assert not merge_into(replica, rec(version=9), NOW)  # older
    assert merge_into(replica, rec(version=10, origin=2), NOW)  # same version, higher origin
    assert not merge_into(replica, rec(version=10, origin=2), NOW)  # same record again
    assert merge_into(replica, rec(version=10, origin=2, accessed=NOW + 5), NOW)  # a touch
    assert merge_into(replica, rec(version=3, deleted=True), NOW)  # a tombstone beats any live record
    assert not merge_into(replica, rec(version=50), NOW)  # and nothing live comes back
    assert replica["k"].deleted
    assert not merge_into(replica, rec(key="x", expires=NOW - 1), NOW)  # born expired: not kept
    merge_into(replica, rec(key="y"), NOW)
    # A later access that has already expired ends the live copy (expiry is that of the later access).
    assert merge_into(replica, rec(key="y", version=11, accessed=NOW + 1, expires=NOW - 1), NOW)
    assert "y" not in replica


def test_bus_messages_are_merged_and_gaps_ask_for_a_resync(state):
    assert state.on_bus(wire.encode_set(rec(), 7, 1, 1, 0)) == []
    assert state.replica["k"].data == {"v": 10}
    assert state.on_bus(wire.encode_set(rec(version=11), 7, 1, 1, 0)) == []  # duplicate seq
    assert state.counts["duplicates"] == 1
    out = state.on_bus(wire.encode_set(rec(version=12), 7, 1, 3, 0))  # seq 2 lost
    assert len(out) == 1 and wire.decode(out[0]).op == wire.RESYNC and wire.decode(out[0]).body == 7
    assert state.on_bus(wire.encode_heartbeat(7, 1, 5, 0)) == []  # rate-limited while the push is due
    assert state.counts["gaps"] == 2 and state.counts["resyncs_sent"] == 1
    # ...but not forgotten: the push may have been cut before that second loss
    assert state.owed_resyncs() == []
    state.clock.advance(0.5)
    (owed,) = state.owed_resyncs()
    assert wire.decode(owed).op == wire.RESYNC and wire.decode(owed).body == 7
    assert state.owed_resyncs() == [] and state.counts["resyncs_sent"] == 2


def test_a_push_taken_before_a_later_gap_leaves_that_gap_owed(state):
    state.on_bus(wire.encode_set(rec(), 7, 1, 1, 0))
    state.on_bus(wire.encode_set(rec(version=12), 7, 1, 3, 0))  # seq 2 lost: asked
    state.on_bus(wire.encode_set(rec(version=14), 7, 1, 5, 0))  # seq 4 lost inside the spacing: owed
    # The push that answers the first request was taken at seq 3: it cannot hold change 4.
    state.on_request(wire.encode_request(wire.PUSH, 1, [], 0, [7, 1, 3]))
    state.clock.advance(0.5)
    (owed,) = state.owed_resyncs()
    assert wire.decode(owed).op == wire.RESYNC and wire.decode(owed).body == 7
    # One taken at seq 5 covers both losses: the asking ends.
    state.on_request(wire.encode_request(wire.PUSH, 2, [], 0, [7, 1, 5]))
    state.clock.advance(5.0)
    assert state.owed_resyncs() == [] and state.counts["resyncs_sent"] == 2


def test_touch_messages_slide_only_the_matching_version(state):
    state.on_bus(wire.encode_set(rec(), 7, 1, 1, 0))
    state.on_bus(wire.encode_touch(rec(accessed=NOW + 30, expires=NOW + 130), 7, 1, 2, 0))
    assert state.replica["k"].accessed == NOW + 30
    state.on_bus(wire.encode_touch(rec(version=9, accessed=NOW + 60), 7, 1, 3, 0))
    assert state.replica["k"].accessed == NOW + 30


def test_a_version_2_frame_is_counted_as_another_version_and_not_merged(state):
    state.on_bus(wire.encode_set(rec(key="k"), 7, 1, 1, 0))
    payload = msgpack.packb([7, 1, 2, 0, "k", 20, 7, NOW, NOW, NOW + 100, msgpack.packb({"v": 20})],
                            use_bin_type=True)
    assert state.on_bus([b"ms2s", payload]) == []
    assert state.dropped == {"other version": 1} and state.replica["k"].data == {"v": 10}
    assert state.on_request([b"ms2S", msgpack.packb([1])]) == ([], [])  # nor is a version-2 request answered
    assert state.dropped == {"other version": 1, "malformed request": 1}


def test_own_relays_hellos_and_bad_frames_are_not_merged(state):
    state.on_bus(wire.encode_set(rec(), 99, 5, 1, 0))
    state.on_bus(wire.encode_hello(7, 1, 1234, 0))
    state.on_bus([b"ms5s", b"\xc1"])
    assert state.replica == {} and state.dropped == {"malformed": 1}


def test_snapshot_is_chunked_and_carries_the_sequence_vector(state):
    for i in range(2500):
        state.merge(rec(key=f"k{i}"))
    state.on_bus(wire.encode_set(rec(key="z"), 7, 1, 1, 0))
    frames = list(state.snapshot(42))
    replies = [wire.decode_reply(f) for f in frames]
    assert [r.op for r in replies] == ["C", "C", "C", "E"]
    hub_epoch, vector, chunks, count, cleared = replies[-1].body
    assert cleared == 0
    assert hub_epoch == 5 and chunks == 3 and count == 2501
    assert vector == {7: (1, 1), 99: (5, 0)}
    assert sum(len(r.body[0]) for r in replies[:-1]) == 2501


def test_snapshot_chunks_stay_within_what_a_frame_may_carry_of_stamps():
    limits = wire.Limits(max_stamps=4)
    state = HubState(clock=FakeClock(wall=NOW), limits=limits)
    for i in range(5):  # two stamps on the wire each: a key of another writer and a removed key
        record = rec(key=f"k{i}", data={"v": 10, "w": 1})
        record.stamps = {"v": (10, 1), "w": (9, 2), "gone": (8, 2)}
        assert state.merge(record)
    *chunks, end = state.snapshot(1)
    assert [len(wire.decode_reply(chunk, limits).body[0]) for chunk in chunks] == [2, 2, 1]
    assert wire.decode_reply(end).body[2:4] == (3, 5)


def test_push_merges_and_relays_only_what_changed(state):
    state.merge(rec(key="a", version=10))
    batch = [wire.record_to_list(r) for r in (rec(key="a", version=5), rec(key="b", version=6))]
    replies, relays = state.on_request(wire.encode_request(wire.PUSH, 1, batch, 0))
    assert wire.decode_reply(replies[0]).body == (1,)
    assert [wire.decode(f).body.key for f in relays] == ["b"]
    assert wire.decode(relays[0]).origin == 99 and wire.decode(relays[0]).seq == 1


def test_get_and_stats_requests(state):
    state.merge(rec(key="a"))
    (reply,), _ = state.on_request(wire.encode_request(wire.GET, 3, "a"))
    assert wire.decode_reply(reply).body[0].key == "a"
    (reply,), _ = state.on_request(wire.encode_request(wire.GET, 4, "nope"))
    assert wire.decode_reply(reply).body == (None,)
    (reply,), _ = state.on_request(wire.encode_request(wire.STATS, 5))
    stats = wire.decode_reply(reply).body[0]
    assert stats["sessions"] == 1 and stats["gets"] == 2 and stats["epoch"] == 5
    assert state.on_request([b"ms5S", b"junk"]) == ([], [])


def test_prune_drops_expired_sessions_and_lapsed_tombstones():
    clock = FakeClock(wall=NOW)
    state = HubState(clock=clock)
    state.merge(rec(key="a", expires=NOW + 10))
    state.merge(rec(key="b", deleted=True, expires=NOW + 20))
    state.merge(rec(key="c", expires=NOW + 30))
    clock.advance(25)
    assert state.prune() == 2 and list(state.replica) == ["c"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 40), st.integers(1, 60), st.booleans(),
                          st.integers(0, 3)), max_size=60))
def test_prune_by_expiry_heap_and_kept_counts_match_a_full_scan(steps):
    """Keys rewritten with later (or earlier) expiries, destroyed, cleared and pruned in between."""
    clock = FakeClock(wall=NOW)
    state = HubState(clock=clock)
    state._expiry_compaction_slack = 0  # rebuild often, to exercise it
    for key, version, life, dead, wait in steps:
        if state.merge(rec(key=f"k{key}", version=version, expires=clock.wall() + life, deleted=dead)):
            assert len(state._expiry) <= 2 * len(state.replica) + 1  # stale entries never pile up
        if wait == 3:
            state.clear(version)
        clock.advance(wait * 5)
        expected = {k for k, r in state.replica.items() if r.expires > clock.wall()}
        state.prune()
        assert set(state.replica) == expected
        stats = state.stats()
        assert stats["tombstones"] == sum(r.deleted for r in state.replica.values())
        assert stats["sessions"] == sum(not r.deleted for r in state.replica.values())


def test_pruning_a_large_replica_looks_only_at_what_expired():
    clock = FakeClock(wall=NOW)
    state = HubState(clock=clock)
    for i in range(5000):
        state.merge(rec(key=f"k{i}", expires=NOW + (10 if i < 5 else 3600)))
    clock.advance(20)
    assert state.prune() == 5
    assert len(state.replica) == 4995 and len(state._expiry) == 4995


def test_hub_config_checks_and_private_runtime_dir(tmp_path):
    with pytest.raises(ConfigError):
        HubConfig(publish="tcp://127.0.0.1:1")  # all three or none
    with pytest.raises(ConfigError):
        HubConfig(publish="udp://x", subscribe="udp://y", requests="udp://z")
    with pytest.raises(ConfigError):
        HubConfig(runtime_dir=str(tmp_path / ("x" * 120))).endpoints()
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with pytest.raises(ConfigError, match="group or others"):
        HubConfig(runtime_dir=str(shared)).endpoints()
    pub, _sub, _req = HubConfig(runtime_dir=str(tmp_path / "rt")).endpoints()
    assert pub.startswith("ipc://") and stat.S_IMODE(os.stat(tmp_path / "rt").st_mode) == 0o700


@pytest.mark.zmq
def test_hub_thread_serves_stats_and_snapshots_and_refuses_a_taken_endpoint(tmp_path):
    rt = str(tmp_path / "rt")
    with Hub(runtime_dir=rt) as hub:
        req = hub.endpoints[2]
        assert query_stats(req)["sessions"] == 0
        assert query_snapshot(req) == []
        with pytest.raises(BusError):
            Hub(runtime_dir=rt).start()
    with pytest.raises(BusError):
        query_stats(req, timeout=0.2)


@pytest.mark.zmq
def test_cli_hub_stats_and_keys(tmp_path, capsys):
    rt = str(tmp_path / "rt")
    with Hub(runtime_dir=rt):
        assert main(["hub", "--runtime-dir", rt, "--stats"]) == 0
    assert '"sessions": 0' in capsys.readouterr().out
    missing = tmp_path / "never-made"
    assert main(["hub", "--runtime-dir", str(missing), "--stats"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()  # a query creates no runtime dir
    assert main(["keys", str(tmp_path / "keys")]) == 0
    assert main(["keys", str(tmp_path / "keys")]) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["hub", "--publish", "tcp://127.0.0.1:1", "--subscribe", "tcp://127.0.0.1:2",
                 "--requests", "tcp://127.0.0.1:3"]) == 2
    assert "CURVE" in capsys.readouterr().err


class Opts:
    def __init__(self, keys=None, insecure=False):
        self.keys = keys
        self.insecure = insecure


def test_curve_policy(tmp_path, caplog):
    tcp = ("tcp://127.0.0.1:5000",)
    assert server_policy(Opts(), ("ipc:///tmp/x",)) is None
    with pytest.raises(ConfigError, match="CURVE"):
        server_policy(Opts(), tcp)
    with pytest.raises(ConfigError, match="CURVE"):
        client_policy(Opts(), tcp)
    assert server_policy(Opts(insecure=True), tcp) is None
    assert "WITHOUT encryption" in caplog.text
    with pytest.raises(ConfigError, match="cannot read"):
        server_policy(Opts(keys=str(tmp_path / "missing")), tcp)
    paths = generate_keys(str(tmp_path / "keys"))
    assert stat.S_IMODE(os.stat(paths["server_secret"]).st_mode) == 0o600
    assert not [n for n in os.listdir(tmp_path / "keys" / "clients") if n.endswith("secret")]
    assert isinstance(server_policy(Opts(keys=str(tmp_path / "keys")), tcp), CurveServer)
    assert isinstance(client_policy(Opts(keys=str(tmp_path / "keys")), tcp), CurveClient)
    os.remove(tmp_path / "keys" / "clients" / "client.key")
    with pytest.raises(ConfigError, match="no \\*.key"):
        CurveServer(str(tmp_path / "keys"))


def test_a_bus_with_tcp_endpoints_and_missing_keys_fails_at_construction(tmp_path):
    from memsession import ZmqBus

    eps = {"publish": "tcp://127.0.0.1:1", "subscribe": "tcp://127.0.0.1:2", "requests": "tcp://127.0.0.1:3"}
    with pytest.raises(ConfigError, match="CURVE"):
        ZmqBus(**eps)
    with pytest.raises(ConfigError, match="cannot read"):
        ZmqBus(**eps, keys=str(tmp_path / "nowhere"))


# -- clear --------------------------------------------------------------------------------


def test_a_clear_on_the_bus_empties_the_replica_up_to_its_version_and_refuses_older_writes(state):
    for key, version in (("old", 10), ("dead", 11), ("new", 30)):
        state.merge(rec(key=key, version=version, deleted=key == "dead"))
    assert state.on_bus(wire.encode_clear(20, 7, 1, 1, 0)) == []
    assert sorted(state.replica) == ["dead", "new"] and state.cleared == 20  # tombstones stay
    assert not state.merge(rec(key="late", version=19))  # written before the clear, arriving after it
    assert state.merge(rec(key="late-end", version=19, deleted=True))  # a tombstone always counts
    assert state.merge(rec(key="after", version=21))
    state.on_bus(wire.encode_clear(15, 7, 1, 2, 0))  # an older clear lowers nothing
    assert state.cleared == 20 and sorted(state.replica) == ["after", "dead", "late-end", "new"]
    assert state.stats()["cleared"] == 20 and state.stats()["clears"] == 1


def test_snapshots_carry_the_watermark_and_pushes_bring_it_back_after_a_restart(state):
    state.merge(rec(key="a", version=10))
    state.on_bus(wire.encode_clear(20, 7, 1, 1, 0))
    *_, end = [wire.decode_reply(f) for f in state.snapshot(1)]
    assert end.body[4] == 20 and end.body[3] == 0
    restarted = HubState(clock=FakeClock(wall=NOW), hub_id=100, epoch=6)
    batch = [wire.record_to_list(r) for r in (rec(key="a", version=10), rec(key="b", version=25))]
    _, relays = restarted.on_request(wire.encode_request(wire.PUSH, 2, batch, 20))
    assert restarted.cleared == 20 and sorted(restarted.replica) == ["b"]
    # the clear is relayed first (others may have missed it too), then what changed
    assert [wire.decode(f).op for f in relays] == [wire.CLEAR, wire.SET]
    assert wire.decode(relays[0]).body == 20
    # pushing the same watermark again relays no clear
    _, relays = restarted.on_request(wire.encode_request(wire.PUSH, 3, [], 20))
    assert relays == []


def test_get_does_not_return_what_a_clear_removed(state):
    state.merge(rec(key="a", version=10))
    state.on_bus(wire.encode_clear(20, 7, 1, 1, 0))
    (reply,), _ = state.on_request(wire.encode_request(wire.GET, 3, "a"))
    assert wire.decode_reply(reply).body == (None,)


def _recycle(state: HubState, clock: FakeClock, lifetimes: int, *, at_once: int = 10, life: float = 30.0) -> None:
    """``lifetimes`` worker processes, ``at_once`` alive at a time, each beating for ``life`` seconds."""
    origin = 1
    for _ in range(lifetimes // at_once):
        generation = range(origin, origin + at_once)
        origin += at_once
        for beat_at in range(0, int(life), 10):
            for o in generation:
                state.on_bus(wire.encode_heartbeat(o, 7 << 12, 0, int(clock.wall() * 1e6)))
            clock.advance(10.0)
            state.prune()  # the hub's once-a-second chore


@pytest.mark.parametrize("lifetimes", [10, 100_000])
def test_hub_state_follows_live_publishers_whatever_the_history(lifetimes: int) -> None:
    """Workers recycled for days: stopped publishers are forgotten, so a join costs what the live ones cost."""
    clock = FakeClock()
    state = HubState(clock=clock, forget_after=60.0)
    _recycle(state, clock, lifetimes)
    assert len(state.tracker) <= 10 * 10  # the live generation and those gone less than a minute ago
    end = list(state.snapshot(1))[-1]
    reply = wire.decode_reply(end)  # the default limits: the reply a joining worker must decode
    vector = reply.body[1]
    assert len(vector) == len(state.tracker) + 1  # every live stream, plus the hub's own
    assert state.counts["forgotten"] == lifetimes - len(state.tracker)


def test_a_forgotten_publisher_that_speaks_again_is_asked_to_resync() -> None:
    clock = FakeClock()
    state = HubState(clock=clock, forget_after=60.0)
    state.on_bus(wire.encode_heartbeat(5, 7 << 12, 3, 0))
    clock.advance(61.0)
    state.prune()
    assert len(state.tracker) == 0
    out = state.on_bus(wire.encode_heartbeat(5, 7 << 12, 9, 0))  # stopped (SIGSTOP), not dead
    assert out and wire.decode(out[0]).op == wire.RESYNC


def test_forget_after_must_outlast_heartbeats() -> None:
    with pytest.raises(ConfigError):
        HubConfig(heartbeat=1.0, forget_after=2.0)
