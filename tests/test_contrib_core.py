"""The session semantics every web integration shares (memsession.contrib.core, memsession.cookies)."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsession import ConfigError, SessionCache, SessionDataError, SignatureError, new_id
from memsession.contrib.core import Cookie, SessionManager, WebConfig, diff, parse_cookie_header
from memsession.cookies import LONGEST_VALUE, CookieSigner
from memsession.session import Record
from memsession.testing import FakeClock
from persist import Persistence

SECRET = "test-secret-0123456789"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> SessionCache:
    return SessionCache(clock=clock, idle_timeout=1800, max_age=3600, touch_interval=60)


@pytest.fixture
def manager(cache: SessionCache) -> SessionManager:
    return SessionManager(cache, WebConfig(secret_keys=(SECRET,)))


def login(manager: SessionManager, **data: object) -> str:
    session = manager.open(None)
    session.update(data)
    cookie = manager.save(session)
    assert cookie is not None and cookie.value is not None
    return cookie.value


# -- cookie codec ------------------------------------------------------------------


class TestCookieSigner:
    def test_round_trip(self) -> None:
        signer = CookieSigner([SECRET])
        sid = new_id()
        assert signer.unsign(signer.sign(sid, 12345)) == (sid, 12345)

    def test_value_fits_the_declared_bound(self) -> None:
        value = CookieSigner([SECRET]).sign(new_id(), (1 << 64) - 1, (1 << 64) - 1)
        assert len(value) == LONGEST_VALUE

    def test_rotation_old_secret_still_verifies_new_one_signs(self) -> None:
        sid = new_id()
        old = CookieSigner(["old-secret"]).sign(sid, 1)
        rotated = CookieSigner(["new-secret", "old-secret"])
        assert rotated.unsign(old) == (sid, 1)
        assert CookieSigner(["new-secret"]).unsign(rotated.sign(sid, 1)) == (sid, 1)
        with pytest.raises(SignatureError):
            CookieSigner(["new-secret"]).unsign(old)

    def test_salt_separates_signatures(self) -> None:
        value = CookieSigner([SECRET], salt="a").sign(new_id(), 1)
        with pytest.raises(SignatureError, match="signature"):
            CookieSigner([SECRET], salt="b").unsign(value)

    @pytest.mark.parametrize(
        "mangle, reason",
        [
            (lambda v: v[:-1], "malformed"),
            (lambda v: v[: len(v) // 2], "malformed"),
            (lambda v: v + "A" * 300, "oversized"),
            (lambda v: v.replace(".", "", 1), "malformed"),
            (lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"), "signature"),
            (lambda v: ("B" if v[0] != "B" else "C") + v[1:], "signature"),
            (lambda v: v[:-1] + "é", "malformed"),
            (lambda v: "", "malformed"),
        ],
    )
    def test_bad_values_are_refused_with_a_reason(self, mangle, reason) -> None:
        signer = CookieSigner([SECRET])
        with pytest.raises(SignatureError, match=reason):
            signer.unsign(mangle(signer.sign(new_id(), 99)))

    def test_remembering_verified_values_never_lets_a_changed_one_through(self) -> None:
        signer = CookieSigner([SECRET])
        value = signer.sign(new_id(), 7)
        assert signer.unsign(value) == signer.unsign(value)
        with pytest.raises(SignatureError):
            signer.unsign(value[:-1] + ("A" if value[-1] != "A" else "B"))
        with pytest.raises(SignatureError):
            CookieSigner(["another-secret"]).unsign(value)

    def test_a_bumped_version_does_not_verify(self) -> None:
        signer = CookieSigner([SECRET])
        sid, _, mac = signer.sign(new_id(), 0x10).split(".")
        with pytest.raises(SignatureError):
            signer.unsign(f"{sid}.11.{mac}")

    @given(st.integers(min_value=0), st.integers(min_value=0, max_value=(1 << 64) - 1), st.characters())
    def test_any_single_character_change_is_refused(self, position: int, version: int, char: str) -> None:
        signer = CookieSigner([SECRET])
        value = signer.sign("A" * 43, version)
        position %= len(value)
        changed = value[:position] + char + value[position + 1 :]
        if changed != value:
            with pytest.raises(SignatureError):
                signer.unsign(changed)

    @pytest.mark.parametrize("secrets", [[], [""], [b""], [None], "", 5])
    def test_missing_secrets_are_a_config_error(self, secrets) -> None:
        with pytest.raises(ConfigError):
            CookieSigner(secrets)


# -- options -------------------------------------------------------------------------


class TestWebConfig:
    def test_defaults_are_the_secure_ones(self) -> None:
        cfg = WebConfig(secret_keys=SECRET)
        assert cfg.secret_keys == (SECRET,)
        assert (cfg.cookie_httponly, cfg.cookie_samesite, cfg.cookie_secure) == (True, "Lax", False)

    @pytest.mark.parametrize(
        "options, option",
        [
            ({}, "secret_keys"),
            ({"secret_keys": ()}, "secret_keys"),
            ({"secret_keys": (SECRET,), "cookie_samesite": "None"}, "cookie_samesite"),
            ({"secret_keys": (SECRET,), "cookie_samesite": "sideways"}, "cookie_samesite"),
            ({"secret_keys": (SECRET,), "cookie_name": "a b"}, "cookie_name"),
            ({"secret_keys": (SECRET,), "consistency_timeout": -1}, "consistency_timeout"),
            ({"secret_keys": (SECRET,), "cookie_path": "x"}, "cookie_path"),
            ({"secret_keys": (SECRET,), "cookie_partitioned": True}, "cookie_partitioned"),
        ],
    )
    def test_bad_options_fail_at_construction(self, options, option) -> None:
        with pytest.raises(ConfigError) as info:
            WebConfig(**options)
        assert info.value.option == option

    def test_samesite_is_normalised(self) -> None:
        assert WebConfig(secret_keys=SECRET, cookie_samesite="strict").cookie_samesite == "Strict"
        assert WebConfig(secret_keys=SECRET, cookie_samesite="none", cookie_secure=True).cookie_samesite == "None"

    def test_build_splits_web_and_cache_options(self) -> None:
        manager = SessionManager.build(secret_keys=[SECRET], cookie_name="sid", idle_timeout=60, maxsize=10)
        assert manager.config.cookie_name == "sid"
        assert (manager.cache.config.idle_timeout, manager.cache.config.maxsize) == (60, 10)

    def test_build_refuses_unknown_options_and_cache_options_with_a_cache(self, cache) -> None:
        with pytest.raises(ConfigError, match="unknown option"):
            SessionManager.build(secret_keys=[SECRET], cookie_nmae="x")
        with pytest.raises(ConfigError, match="cache="):
            SessionManager.build(cache, secret_keys=[SECRET], maxsize=5)


# -- load and save -----------------------------------------------------------------


class TestLifecycle:
    def test_anonymous_traffic_stores_nothing_and_sets_no_cookie(self, manager, cache) -> None:
        for _ in range(100):
            session = manager.open(None)
            assert session == {} and session.new
            _ = session.get("user")
            assert manager.save(session) is None
        assert cache.length() == 0

    def test_first_write_stores_and_signs(self, manager, cache) -> None:
        session = manager.open(None)
        session["user"] = "ada"
        cookie = manager.save(session)
        assert cookie is not None and cookie.value is not None
        record = cache.record(session.sid)
        assert record is not None and record.data == {"user": "ada"}
        assert manager.signer.unsign(cookie.value) == (session.sid, record.version)
        assert cookie.expires == record.expires

    def test_next_request_sees_the_data(self, manager) -> None:
        value = login(manager, user="ada", roles=["admin"])
        session = manager.open(value)
        assert session == {"user": "ada", "roles": ["admin"]} and not session.new

    def test_unchanged_session_is_not_written(self, manager, cache) -> None:
        value = login(manager, user="ada")
        sets = cache.stats()["sets"]
        session = manager.open(value)
        assert session["user"] == "ada"
        assert manager.save(session) is None
        assert cache.stats()["sets"] == sets

    def test_setting_the_same_value_is_not_a_write(self, manager, cache) -> None:
        value = login(manager, n=1)
        sets = cache.stats()["sets"]
        session = manager.open(value)
        session["n"] = 1
        assert session.modified  # as in Flask: the cookie is sent again ...
        assert manager.save(session) is not None
        assert cache.stats()["sets"] == sets  # ... but nothing is stored

    def test_a_change_of_type_is_a_change(self, manager) -> None:
        value = login(manager, flag=1)
        session = manager.open(value)
        session["flag"] = True
        manager.save(session)
        assert manager.open(value)["flag"] is True

    def test_nested_mutation_is_saved_without_marking_modified(self, manager) -> None:
        value = login(manager, cart=["apple"])
        session = manager.open(value)
        session["cart"].append("pear")
        assert manager.save(session) is not None
        assert manager.open(value)["cart"] == ["apple", "pear"]

    def test_the_copy_is_private(self, manager, cache) -> None:
        value = login(manager, cart=["apple"])
        session = manager.open(value)
        session["cart"].append("pear")
        assert cache.get(session.sid) == {"cart": ["apple"]}

    def test_non_json_values_raise_at_save(self, manager) -> None:
        session = manager.open(None)
        session["when"] = object()
        with pytest.raises(SessionDataError):
            manager.save(session)

    def test_removing_every_key_leaves_an_empty_session_that_a_concurrent_set_survives(self, manager, cache) -> None:
        # Ending the session here would beat the key the other request sets at the same moment.
        value = login(manager, user="ada")
        emptying, other = manager.open(value), manager.open(value)
        del emptying["user"]
        cookie = manager.save(emptying)
        assert cookie is not None and cookie.value is not None
        assert not cache.record(emptying.sid).deleted and cache.get(emptying.sid) == {}
        other["theme"] = "dark"
        manager.save(other)
        assert manager.open(value) == {"theme": "dark"}

    def test_clear_ends_the_session_even_if_others_wrote_meanwhile(self, manager, cache) -> None:
        value = login(manager, user="ada")
        logout, other = manager.open(value), manager.open(value)
        other["theme"] = "dark"
        manager.save(other)
        logout.clear()
        assert manager.save(logout) == Cookie(None)
        assert manager.open(value) == {}

    def test_clear_then_write_replaces_the_whole_session(self, manager) -> None:
        value = login(manager, user="ada", cart=[1])
        session = manager.open(value)
        session.clear()
        session["flash"] = "bye"
        cookie = manager.save(session)
        assert manager.open(cookie.value) == {"flash": "bye"}

    def test_destroy(self, manager, cache) -> None:
        value = login(manager, user="ada")
        session = manager.open(value)
        session.destroy()
        assert session == {}
        assert manager.save(session) == Cookie(None)
        assert manager.open(value) == {}
        assert cache.length() == 0

    def test_regenerate_moves_the_data_to_a_new_id(self, manager, cache) -> None:
        value = login(manager, cart=["apple"])
        session = manager.open(value)
        old_sid = session.sid
        session["user"] = "ada"
        session.regenerate()
        cookie = manager.save(session)
        assert session.sid != old_sid
        assert manager.open(cookie.value) == {"cart": ["apple"], "user": "ada"}
        assert cache.record(old_sid).deleted
        replayed = manager.open(value)
        assert replayed == {} and replayed.sid is None

    def test_replayed_cookie_after_logout_is_fresh_and_never_reuses_the_id(self, manager) -> None:
        value = login(manager, user="ada")
        session = manager.open(value)
        old_sid = session.sid
        session.destroy()
        manager.save(session)
        replay = manager.open(value)
        assert replay == {} and replay.new and replay.had_cookie
        replay["x"] = 1
        cookie = manager.save(replay)
        assert replay.sid != old_sid
        assert manager.signer.unsign(cookie.value)[0] != old_sid

    @pytest.mark.parametrize("bad", ["garbage", "A" * 5000, "..", "\x00"])
    def test_bad_cookie_gives_a_fresh_session_and_is_removed(self, manager, bad) -> None:
        login(manager, user="ada")
        session = manager.open(bad)
        assert session == {} and session.sid is None
        assert manager.save(session) == Cookie(None)
        assert manager.stats()["bad_cookies"] == 1

    def test_first_verifying_value_wins_among_duplicates(self, manager) -> None:
        value = login(manager, user="ada")
        assert manager.open(["junk", value]) == {"user": "ada"}

    def test_cookie_signed_with_another_secret_is_refused(self, manager, cache) -> None:
        value = login(manager, user="ada")
        other = SessionManager(cache, WebConfig(secret_keys=("another-secret",)))
        assert other.open(value) == {}


class TestOverlappingRequests:
    def test_different_keys_both_survive(self, manager) -> None:
        value = login(manager, user="ada")
        first, second = manager.open(value), manager.open(value)
        first["a"] = 1
        second["b"] = 2
        manager.save(first)
        manager.save(second)
        assert manager.open(value) == {"user": "ada", "a": 1, "b": 2}

    def test_a_delete_and_a_set_of_other_keys_both_survive(self, manager) -> None:
        value = login(manager, user="ada", flash="hi")
        first, second = manager.open(value), manager.open(value)
        del first["flash"]
        second["theme"] = "dark"
        manager.save(second)
        manager.save(first)
        assert manager.open(value) == {"user": "ada", "theme": "dark"}

    def test_a_session_destroyed_meanwhile_stays_destroyed(self, manager, cache) -> None:
        value = login(manager, user="ada")
        slow, logout = manager.open(value), manager.open(value)
        logout.destroy()
        manager.save(logout)
        slow["late"] = True
        assert manager.save(slow) == Cookie(None)
        assert cache.record(slow.sid).deleted
        assert manager.open(value) == {}

    def test_threads_writing_distinct_keys_lose_none(self, manager) -> None:
        value = login(manager, user="ada")
        barrier = threading.Barrier(8)

        def writer(n: int) -> None:
            barrier.wait(timeout=10)
            for i in range(50):
                session = manager.open(value)
                session[f"k{n}-{i}"] = i
                manager.save(session)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        final = manager.open(value)
        assert len(final) == 1 + 8 * 50


class TestExpiryInTheCookie:
    def test_read_within_touch_interval_sends_no_cookie(self, manager, clock) -> None:
        value = login(manager, user="ada")
        clock.advance(30)
        assert manager.save(manager.open(value)) is None

    def test_read_after_touch_interval_refreshes_the_cookie_expiry(self, manager, cache, clock) -> None:
        value = login(manager, user="ada")
        first = cache.record(manager.open(value).sid).expires
        clock.advance(120)
        session = manager.open(value)
        cookie = manager.save(session)
        assert cookie is not None and cookie.expires == pytest.approx(first + 120)
        assert cookie.expires == cache.record(session.sid).expires

    def test_a_session_only_read_stays_alive_past_the_idle_timeout(self, clock) -> None:
        cache = SessionCache(clock=clock, idle_timeout=1800, max_age=None, touch_interval=60)
        manager = SessionManager(cache, WebConfig(secret_keys=SECRET))
        value = login(manager, user="ada")
        for _ in range(25):  # 2,500 s of reads every 100 s; idle_timeout is 1,800 s
            clock.advance(100)
            assert manager.open(value) == {"user": "ada"}
        clock.advance(1801)
        assert manager.open(value) == {}

    def test_absolute_max_age_caps_the_cookie(self, manager, cache, clock) -> None:
        value = login(manager, user="ada")
        sid = manager.open(value).sid
        created = cache.record(sid).created
        for _ in range(3):
            clock.advance(1000)
            session = manager.open(value)
            session["tick"] = clock.wall()
            cookie = manager.save(session)
            assert cookie.expires == min(clock.wall() + 1800, created + 3600)
            value = cookie.value
        clock.advance(1000)  # 4000 s after creation: past max_age however active
        session = manager.open(value)
        assert session == {} and session.sid is None

    def test_refresh_can_be_turned_off(self, cache, clock) -> None:
        manager = SessionManager(cache, WebConfig(secret_keys=SECRET, refresh_each_request=False))
        value = login(manager, user="ada")
        clock.advance(120)
        assert manager.save(manager.open(value)) is None

    def test_non_permanent_cookies_have_no_expiry(self, cache) -> None:
        manager = SessionManager(cache, WebConfig(secret_keys=SECRET, permanent=False))
        session = manager.open(None)
        session["x"] = 1
        cookie = manager.save(session)
        header = manager.set_cookie_header(cookie)
        assert "Max-Age" not in header and "Expires" not in header
        assert "Max-Age" in manager.set_cookie_header(cookie, permanent=True)

    def test_set_cookie_header(self, cache, clock) -> None:
        manager = SessionManager(
            cache, WebConfig(secret_keys=SECRET, cookie_secure=True, cookie_domain="example.org")
        )
        header = manager.set_cookie_header(Cookie("v", clock.wall() + 100))
        assert header.startswith("session=v; Max-Age=100; Expires=")
        assert header.endswith("; Path=/; Domain=example.org; Secure; HttpOnly; SameSite=Lax")
        partitioned = SessionManager(
            cache, WebConfig(secret_keys=SECRET, cookie_secure=True, cookie_partitioned=True)
        ).set_cookie_header(Cookie("v"))
        assert partitioned.endswith("; Secure; HttpOnly; SameSite=Lax; Partitioned")
        deleted = manager.set_cookie_header(Cookie(None))
        assert deleted.startswith("session=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT")


class TestFullCache:
    def test_a_flood_of_cookie_less_writes_keeps_a_returning_user_logged_in(self, clock) -> None:
        """Every request that brings a session's cookie is a use of it, touch due or not."""
        cache = SessionCache(clock=clock, maxsize=200, touch_interval=60)
        manager = SessionManager(cache, WebConfig(secret_keys=SECRET))
        value = login(manager, user="ada")
        clock.advance(1)
        assert manager.open(value) == {"user": "ada"}  # she comes back, well within touch_interval
        for i in range(1000):
            visitor = manager.open(None)
            visitor["visit"] = i
            assert manager.save(visitor) is not None
        assert manager.open(value) == {"user": "ada"}
        assert cache.stats()["touches"] == 0 and cache.stats()["evicted"]["size"] == 801


class ReplicatedCache(SessionCache):
    """A cache whose ``wait_for`` receives records from a peer, as a bus would deliver them."""

    def __init__(self, peer: SessionCache | None, **options: object) -> None:
        super().__init__(**options)
        self.peer = peer
        self.waits: list[tuple[str, int, float]] = []
        self.deliver = True

    def wait_for(self, sid: str, version: int, timeout: float, origin: int = 0) -> Record | None:
        self.waits.append((sid, version, timeout))
        remote = self.peer.record(sid) if self.peer is not None else None
        if self.deliver and remote is not None:
            self.apply(remote)
        return self.record(sid)


class TestReadYourWrites:
    def test_a_worker_behind_the_cookie_waits_for_the_write(self, clock) -> None:
        worker_a = SessionCache(clock=clock)
        worker_b = ReplicatedCache(worker_a, clock=clock)
        a = SessionManager(worker_a, WebConfig(secret_keys=SECRET, consistency_timeout=0.25))
        b = SessionManager(worker_b, WebConfig(secret_keys=SECRET, consistency_timeout=0.25))
        value = login(a, user="ada")
        sid, version = a.signer.unsign(value)
        assert b.needs_catch_up(value)
        assert b.open(value) == {"user": "ada"}
        assert worker_b.waits == [(sid, version, 0.25)]
        # Now B is current: no more waiting.
        assert not b.needs_catch_up(value)
        assert b.open(value) == {"user": "ada"} and len(worker_b.waits) == 1

    def test_an_older_local_copy_is_brought_up_to_date(self, clock) -> None:
        worker_a = SessionCache(clock=clock)
        worker_b = ReplicatedCache(worker_a, clock=clock)
        a = SessionManager(worker_a, WebConfig(secret_keys=SECRET))
        b = SessionManager(worker_b, WebConfig(secret_keys=SECRET))
        value = login(a, step=1)
        worker_b.apply(worker_a.record(a.signer.unsign(value)[0]))
        session = a.open(value)
        session["step"] = 2
        newer = a.save(session).value
        assert b.open(value) == {"step": 1}  # B's copy is as new as this cookie
        assert b.open(newer) == {"step": 2}  # ... but not as this one

    def test_nothing_arrives_in_time_serves_the_older_copy_and_counts_it(self, clock) -> None:
        worker_a = SessionCache(clock=clock)
        worker_b = ReplicatedCache(worker_a, clock=clock)
        a = SessionManager(worker_a, WebConfig(secret_keys=SECRET))
        b = SessionManager(worker_b, WebConfig(secret_keys=SECRET))
        value = login(a, step=1)
        worker_b.apply(worker_a.record(a.signer.unsign(value)[0]))
        session = a.open(value)
        session["step"] = 2
        newer = a.save(session).value
        worker_b.deliver = False
        assert b.open(newer) == {"step": 1}
        assert b.stats()["stale_reads"] == 1

    def test_a_cache_that_cannot_find_the_write_gives_a_fresh_session(self, manager) -> None:
        value = login(manager, user="ada")
        elsewhere = SessionManager(SessionCache(), WebConfig(secret_keys=SECRET))
        session = elsewhere.open(value)
        assert session == {} and session.sid is None

    def test_only_recent_writes_are_waited_for(self, clock) -> None:
        worker_a = SessionCache(clock=clock)
        worker_b = ReplicatedCache(worker_a, clock=clock)
        a = SessionManager(worker_a, WebConfig(secret_keys=SECRET, consistency_timeout=0.25))
        b = SessionManager(worker_b, WebConfig(secret_keys=SECRET, consistency_timeout=0.25))
        value = login(a, user="ada")
        # Long after the write, replication has had its chance: read through at once
        # (so an old cookie replayed in a loop can't hold a worker for the timeout).
        clock.advance(60)
        assert b.open(value) == {"user": "ada"}
        assert worker_b.waits[0][2] == 0.0


# -- helpers -------------------------------------------------------------------------


def test_parse_cookie_header() -> None:
    header = 'a=1; session=first; other="x"; session="second"'
    assert parse_cookie_header(header, "session") == ["first", "second"]
    assert parse_cookie_header(header, "other") == ["x"]
    assert parse_cookie_header(header, "missing") == []
    assert parse_cookie_header("sessionx=1", "session") == []


def test_diff() -> None:
    assert diff({"a": 1, "b": [1], "c": 0}, {"a": 1, "b": [1, 2], "d": None}) == ({"b": [1, 2], "d": None}, ["c"])
    assert diff({"a": 1}, {"a": 1.0}) == ({"a": 1.0}, [])


class TestStoreBehindTheCache:
    def test_a_restarted_process_finds_sessions_in_its_store(self, tmp_path) -> None:
        from persist.jsonfile import JsonFileStore
        from persist.persistence import PersistConfig

        path = tmp_path / "sessions.json"
        before = SessionCache(persistence=Persistence(JsonFileStore(path), PersistConfig(mode="write_through")))
        value = login(SessionManager(before, WebConfig(secret_keys=SECRET)), user="ada", cart=[1])
        before.close()
        after = SessionCache(persistence=Persistence(JsonFileStore(path)))
        sid = CookieSigner([SECRET]).unsign(value)[0]
        assert after.record(sid) is None  # not in memory: only the store has it
        manager = SessionManager(after, WebConfig(secret_keys=SECRET))
        assert manager.needs_catch_up(value)  # async callers read through in a thread
        session = manager.open(value)
        assert session == {"user": "ada", "cart": [1]} and session.sid == sid
        after.close()
