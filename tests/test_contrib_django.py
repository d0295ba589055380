"""Django session engine: the checks of Django's own SessionTestsMixin, ported, plus the middleware.

Django's session tests live in its source tree, not in the installed
package, so the contract checks that apply to every backend are ported here
(sync and async), followed by the ones that apply to server-side backends
(``save(must_create)``, ``UpdateError``, ``clearsessions``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from email.utils import parsedate_to_datetime

import django
import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(
        SECRET_KEY="django-test-secret",
        # auth (and the contenttypes it needs) for the login test: its users live in an
        # in-memory SQLite database; the sessions never touch it.
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"],
        MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
        SESSION_ENGINE="memsession.contrib.django",
        ROOT_URLCONF=__name__,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # fast; the hash is not under test
        USE_TZ=True,
        MEMSESSION={"maxsize": 1000, "max_age": 3600},
    )
    django.setup()

from django.contrib.auth import authenticate, get_user, login
from django.contrib.sessions.backends.base import CreateError, UpdateError
from django.core import management
from django.http import HttpResponse, JsonResponse
from django.test import Client, override_settings
from django.urls import path
from django.utils import timezone

from memsession import SessionCache, is_valid_sid
from memsession.contrib import django as backend
from memsession.contrib.django import SessionStore, get_cache, set_cache
from memsession.testing import FakeClock
from persist import Persistence

CACHE_OPTIONS = {"maxsize": 1000, "max_age": 3600, "idle_timeout": 1209600}


@pytest.fixture(autouse=True)
def fresh_cache():
    # A cache per test: building one from settings would make the process's
    # shared cache (memsession.contrib.process.session_cache), kept for good.
    previous = set_cache(SessionCache(**CACHE_OPTIONS))
    yield
    set_cache(previous)


@pytest.fixture
def session() -> SessionStore:
    return SessionStore()


def run(coro):
    return asyncio.run(coro)


# -- SessionTestsMixin, ported ----------------------------------------------------------


class TestSessionContract:
    @pytest.fixture(autouse=True, params=[True, False], ids=["USE_TZ=True", "USE_TZ=False"])
    def use_tz(self, request):
        # Django's own session tests run under both settings: naive and aware datetimes.
        with override_settings(USE_TZ=request.param):
            yield

    def test_new_session(self, session) -> None:
        assert session.modified is False and session.accessed is False

    def test_get_empty(self, session) -> None:
        assert session.get("cat") is None

    def test_store(self, session) -> None:
        session["cat"] = "dog"
        assert session.modified is True
        assert session.pop("cat") == "dog"

    def test_pop(self, session) -> None:
        session["some key"] = "exists"
        session.accessed = session.modified = False
        assert session.pop("some key") == "exists"
        assert session.accessed is True and session.modified is True
        assert session.get("some key") is None

    def test_pop_default(self, session) -> None:
        assert session.pop("some key", "does not exist") == "does not exist"
        assert session.accessed is True and session.modified is False

    def test_pop_no_default_keyerror_raised(self, session) -> None:
        with pytest.raises(KeyError):
            session.pop("some key")

    def test_setdefault(self, session) -> None:
        assert session.setdefault("foo", "bar") == "bar"
        assert session.setdefault("foo", "baz") == "bar"
        assert session.accessed is True and session.modified is True

    def test_update(self, session) -> None:
        session.update({"update key": 1})
        assert session.accessed is True and session.modified is True
        assert session.get("update key") == 1

    def test_has_key_keys_values_items(self, session) -> None:
        session["x"] = 1
        session.modified = session.accessed = False
        assert "x" in session and list(session.keys()) == ["x"]
        assert list(session.values()) == [1] and list(session.items()) == [("x", 1)]
        assert session.accessed is True and session.modified is False

    def test_clear(self, session) -> None:
        session["x"] = 1
        session.modified = session.accessed = False
        session.clear()
        assert list(session.items()) == []
        assert session.accessed is True and session.modified is True

    def test_save(self, session) -> None:
        session.save()
        assert session.exists(session.session_key) is True

    def test_delete(self, session) -> None:
        session.save()
        session.delete(session.session_key)
        assert session.exists(session.session_key) is False

    def test_flush(self, session) -> None:
        session["foo"] = "bar"
        session.save()
        prev_key = session.session_key
        session.flush()
        assert session.exists(prev_key) is False
        assert session.session_key != prev_key and session.session_key is None
        assert session.modified is True and session.accessed is True

    def test_cycle(self, session) -> None:
        session["a"], session["b"] = "c", "d"
        session.save()
        prev_key = session.session_key
        prev_data = list(session.items())
        session.cycle_key()
        assert session.exists(prev_key) is False
        assert session.session_key != prev_key
        assert list(session.items()) == prev_data

    def test_cycle_with_no_session_cache(self, session) -> None:
        session["a"], session["b"] = "c", "d"
        session.save()
        prev_data = session.items()
        session = SessionStore(session.session_key)
        assert not hasattr(session, "_session_cache")
        session.cycle_key()
        assert sorted(session.items()) == sorted(prev_data)

    def test_save_doesnt_clear_data(self, session) -> None:
        session["a"] = "b"
        session.save()
        assert session["a"] == "b"

    def test_invalid_key(self) -> None:
        session = SessionStore("1")
        session.save()
        assert session.session_key != "1"
        assert session.get("cat") is None
        session.delete()
        session.delete("1")

    def test_session_key_validation(self, session) -> None:
        session._session_key = ""
        assert session.session_key is None
        session._session_key = "1234567"
        assert session.session_key is None
        session._session_key = "12345678"
        assert session.session_key == "12345678"

    def test_session_key_is_read_only(self, session) -> None:
        with pytest.raises(AttributeError):
            session.session_key = session._get_new_session_key()

    def test_new_keys_are_memsession_ids(self, session) -> None:
        session["x"] = 1
        session.save()
        assert is_valid_sid(session.session_key)

    def test_default_expiry(self, session) -> None:
        # Django's check, with memsession's one difference: the age never goes past the cache's
        # max_age (3600 s here), so a cookie never outlives its session.
        assert session.get_expiry_age() == min(settings.SESSION_COOKIE_AGE, 3600)
        session.set_expiry(0)
        assert session.get_expiry_age() == min(settings.SESSION_COOKIE_AGE, 3600)
        set_cache(SessionCache(maxsize=10, idle_timeout=settings.SESSION_COOKIE_AGE, max_age=None))
        assert SessionStore().get_expiry_age() == settings.SESSION_COOKIE_AGE  # Django's own, exactly

    def test_custom_expiry_seconds(self, session) -> None:
        modification = timezone.now()
        session.set_expiry(10)
        assert session.get_expiry_date(modification=modification) == modification + timedelta(seconds=10)
        assert session.get_expiry_age(modification=modification) == 10

    def test_custom_expiry_datetime(self, session) -> None:
        modification = timezone.now()
        session.set_expiry(modification + timedelta(seconds=10))
        assert session.get_expiry_date(modification=modification) == modification + timedelta(seconds=10)
        assert session.get_expiry_age(modification=modification) == 10

    def test_custom_expiry_reset(self, session) -> None:
        session.set_expiry(None)
        session.set_expiry(10)
        session.set_expiry(None)
        assert session.get_expiry_age() == min(settings.SESSION_COOKIE_AGE, 3600)

    def test_get_expire_at_browser_close(self, session) -> None:
        for at_close, expected in ((False, (False, True, False)), (True, (False, True, True))):
            with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=at_close):
                results = []
                for value in (10, 0, None):
                    session.set_expiry(value)
                    results.append(session.get_expire_at_browser_close())
                assert tuple(results) == expected

    def test_decode(self, session) -> None:
        data = {"a test key": "a test value"}
        assert session.decode(session.encode(data)) == data

    def test_actual_expiry(self, session) -> None:
        session["foo"] = "bar"
        session.set_expiry(-timedelta(seconds=10))
        session.save()
        old_key = session.session_key
        new_session = SessionStore(old_key)
        assert "foo" not in new_session
        assert new_session.session_key is None
        assert session.exists(old_key) is False

    def test_session_load_does_not_create_record(self) -> None:
        session = SessionStore("someunknownkey")
        session.load()
        assert session.session_key is None
        assert session.exists(session.session_key) is False
        session.delete()

    def test_session_save_does_not_resurrect_session_logged_out_in_other_context(self) -> None:
        s1 = SessionStore()
        s1["test_data"] = "value1"
        s1.save(must_create=True)
        s2 = SessionStore(s1.session_key)
        s2.delete()
        s1["test_data"] = "value2"
        with pytest.raises(UpdateError):
            s1.save()
        assert s1.exists(s1.session_key) is False

    def test_must_create_refuses_an_existing_key(self, session) -> None:
        session["a"] = 1
        session.save()
        other = SessionStore(session.session_key)
        other["b"] = 2
        with pytest.raises(CreateError):
            other.save(must_create=True)

    def test_an_unknown_key_is_never_adopted(self) -> None:
        session = SessionStore("a" * 43)
        session["x"] = 1
        session.save()
        assert session.session_key != "a" * 43 and session.exists("a" * 43) is False


class TestSessionContractAsync:
    def test_store_and_load(self, session) -> None:
        async def scenario():
            await session.aset("cat", "dog")
            assert session.modified is True
            await session.asave()
            other = SessionStore(session.session_key)
            assert await other.aget("cat") == "dog"
            assert await other.aexists(session.session_key) is True

        run(scenario())

    def test_cycle_flush_delete(self, session) -> None:
        async def scenario():
            await session.aset("a", "c")
            await session.asave()
            prev_key = session.session_key
            await session.acycle_key()
            assert session.session_key != prev_key
            assert await session.aexists(prev_key) is False
            assert list(await session.aitems()) == [("a", "c")]
            key = session.session_key
            await session.asave()
            await session.aflush()
            assert await session.aexists(key) is False and session.session_key is None

        run(scenario())

    def test_asave_does_not_resurrect(self) -> None:
        async def scenario():
            s1 = SessionStore()
            await s1.aset("test_data", "value1")
            await s1.asave(must_create=True)
            s2 = SessionStore(s1.session_key)
            await s2.adelete()
            await s1.aset("test_data", "value2")
            with pytest.raises(UpdateError):
                await s1.asave()

        run(scenario())

    def test_actual_expiry(self, session) -> None:
        async def scenario():
            await session.aset("foo", "bar")
            await session.aset_expiry(-timedelta(seconds=10))
            await session.asave()
            new_session = SessionStore(session.session_key)
            assert not await new_session.ahas_key("foo")

        run(scenario())

    def test_aclear_expired(self) -> None:
        run(SessionStore.aclear_expired())


# -- beyond Django's own backends ---------------------------------------------------------


def test_overlapping_saves_of_different_keys_both_survive(session) -> None:
    session["user"] = "ada"
    session.save()
    first, second = SessionStore(session.session_key), SessionStore(session.session_key)
    first["a"] = first.get("a", 0) + 1
    second["b"] = 2
    del second["user"]
    first.save()
    second.save()
    assert dict(SessionStore(session.session_key).items()) == {"a": 1, "b": 2}


def test_settings_translate_into_cache_options() -> None:
    options, timeout = backend._settings()
    assert options == {**CACHE_OPTIONS, "idle_timeout": settings.SESSION_COOKIE_AGE}
    assert timeout == 0.1
    with override_settings(MEMSESSION={"consistency_timeout": 0.5}):
        assert backend._settings()[1] == 0.5


def test_bad_memsession_setting_fails() -> None:
    from memsession import ConfigError

    set_cache(None)
    with override_settings(MEMSESSION={"consistency_timeout": -1}), pytest.raises(ConfigError):
        SessionStore()
    with override_settings(MEMSESSION={"maxsize": 0}), pytest.raises(ConfigError):
        SessionStore()
    with override_settings(MEMSESSION={"nonsense": 1}), pytest.raises(ConfigError):
        SessionStore()


def test_set_cache_installs_another_cache() -> None:
    cache = SessionCache(maxsize=5)
    set_cache(cache)
    session = SessionStore()
    session["x"] = 1
    session.save()
    assert session.session_key in cache


def test_clearsessions_command(session) -> None:
    session["foo"] = "bar"
    session.set_expiry(3600)
    session.save()
    past = SessionStore()
    past["foo"] = "bar"
    past.set_expiry(-3600)
    past.save()
    cache = get_cache()
    assert cache.length() == 2
    management.call_command("clearsessions")
    assert cache.length() == 1 and session.session_key in cache


# -- through Django's SessionMiddleware ---------------------------------------------------


def login_view(request):
    request.session.cycle_key()
    request.session["user"] = request.GET["user"]
    return HttpResponse("ok")


def me_view(request):
    return JsonResponse(dict(request.session.items()))


def add_view(request):
    request.session[request.GET["key"]] = 1
    return HttpResponse("ok")


def logout_view(request):
    request.session.flush()
    return HttpResponse("ok")


def auth_login_view(request):
    # Django's own login: it cycles the session key (cycle_key, or flush for another user).
    user = authenticate(request, username=request.POST["username"], password=request.POST["password"])
    if user is None:
        return HttpResponse("refused", status=403)
    login(request, user)
    return HttpResponse("ok")


def whoami_view(request):
    user = get_user(request)
    return HttpResponse(user.get_username() if user.is_authenticated else "")


def grow_view(request):
    request.session["big"] = "x" * 1000
    return HttpResponse("grown")


urlpatterns = [
    path("grow", grow_view),
    path("auth-login", auth_login_view),
    path("whoami", whoami_view),
    path("login", login_view),
    path("me", me_view),
    path("add", add_view),
    path("logout", logout_view),
]


def test_middleware_login_read_logout() -> None:
    client = Client()
    response = client.get("/me")
    assert response.json() == {} and "sessionid" not in response.cookies
    response = client.get("/login?user=ada")
    morsel = response.cookies["sessionid"]
    assert morsel["httponly"] and morsel["samesite"] == "Lax" and is_valid_sid(morsel.value)
    assert client.get("/me").json() == {"user": "ada"}
    old = morsel.value
    client.get("/logout")
    assert client.get("/me").json() == {}
    client.cookies["sessionid"] = old  # replayed after logout
    assert client.get("/me").json() == {}


def test_middleware_with_an_unknown_key_gives_a_fresh_session() -> None:
    client = Client()
    client.cookies["sessionid"] = "x" * 43
    assert client.get("/me").json() == {}
    response = client.get("/add?key=k")
    assert response.cookies["sessionid"].value != "x" * 43


@pytest.mark.parametrize("use_tz", [True, False])
def test_an_expiry_set_as_a_timedelta_loads_under_either_time_zone_setting(use_tz: bool) -> None:
    with override_settings(USE_TZ=use_tz):
        session = SessionStore()
        session["k"] = "v"
        session.set_expiry(timedelta(minutes=5))
        session.save()
        again = SessionStore(session.session_key)
        assert again["k"] == "v" and 299 <= again.get_expiry_age() <= 300


@pytest.mark.parametrize("use_tz", [True, False])
def test_the_cookie_ends_when_the_session_does_at_the_latest(use_tz: bool) -> None:
    """Max-Age is Django's lifetime, cut to what the cache's ``max_age`` leaves of the session."""
    clock = FakeClock(wall=time.time())
    set_cache(SessionCache(clock=clock, **CACHE_OPTIONS))  # max_age 3600, idle timeout 14 days
    with override_settings(USE_TZ=use_tz):
        client = Client()
        first = client.get("/add?key=a").cookies["sessionid"]
        assert first["max-age"] == 3600
        clock.advance(3000)
        later = client.get("/add?key=b").cookies["sessionid"]
        assert later.value == first.value and later["max-age"] == 600
        expires = parsedate_to_datetime(later["expires"]).timestamp()
        assert abs(expires - (time.time() + 600)) < 5
        # set_expiry shorter than what is left wins, as in Django.
        session = SessionStore(first.value)
        session.set_expiry(60)
        session.save()
        assert session.get_expiry_age() == 60
        clock.advance(590)
        assert SessionStore(first.value).get_expiry_age() == 10


def test_module_exposes_a_session_engine() -> None:
    assert backend.SessionStore is SessionStore


# -- read-your-writes across workers (memsession's SessionMiddleware) -------------------

RYW_MIDDLEWARE = ["memsession.contrib.django.SessionMiddleware"]
DJANGO_MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware"]


class Replica(SessionCache):
    """Another worker's cache: ``wait_for`` brings records from a peer, as the bus would."""

    def __init__(self, peer: SessionCache, **options: object) -> None:
        super().__init__(**options)
        self.peer = peer
        self.waits: list[tuple[str, int, float]] = []

    def wait_for(self, sid, version, timeout, origin=0):
        self.waits.append((sid, version, timeout))
        remote = self.peer.record(sid)
        if remote is not None:
            self.apply(remote)
        return self.record(sid)


@override_settings(MIDDLEWARE=RYW_MIDDLEWARE)
def test_companion_cookie_carries_the_last_write() -> None:
    from memsession.cookies import CookieSigner

    client = Client()
    response = client.get("/login?user=ada")
    sid = response.cookies["sessionid"].value
    companion = response.cookies["sessionid_v"]
    assert companion["httponly"] and companion["max-age"] == response.cookies["sessionid"]["max-age"]
    signer = CookieSigner([settings.SECRET_KEY], salt="memsession.django.version")
    assert signer.unsign(companion.value) == (sid, get_cache().record(sid).version)
    response = client.get("/logout")
    assert response.cookies["sessionid_v"].value == "" and response.cookies["sessionid"].value == ""


@override_settings(MIDDLEWARE=RYW_MIDDLEWARE)
def test_a_worker_behind_waits_for_the_users_last_write() -> None:
    worker_a = SessionCache(idle_timeout=3600)
    worker_b = Replica(worker_a, idle_timeout=3600)
    client = Client()
    set_cache(worker_a)
    client.get("/login?user=ada")
    set_cache(worker_b)
    assert client.get("/me").json() == {"user": "ada"}
    sid = client.cookies["sessionid"].value
    assert [w[:2] for w in worker_b.waits] == [(sid, worker_a.record(sid).version)]
    assert worker_b.waits[0][2] == 0.1
    # B now holds the last write: the next request doesn't wait.
    client.get("/me")
    assert len(worker_b.waits) == 1


def test_without_the_companion_cookie_a_worker_missing_the_session_still_asks_for_it() -> None:
    # A miss is never taken for "no such session" while the hub or store may hold it:
    # the worker asks for any write since the last clear (the version is unknown).
    worker_a = SessionCache(idle_timeout=3600)
    worker_b = Replica(worker_a, idle_timeout=3600)
    client = Client()
    set_cache(worker_a)
    client.get("/login?user=ada")
    set_cache(worker_b)
    assert client.get("/me").json() == {"user": "ada"}
    sid = client.cookies["sessionid"].value
    assert [w[:2] for w in worker_b.waits] == [(sid, worker_b.cleared + 1)]
    # Held now: a hit does not ask again.
    client.get("/me")
    assert len(worker_b.waits) == 1


@override_settings(MIDDLEWARE=RYW_MIDDLEWARE)
def test_a_forged_companion_cookie_is_ignored() -> None:
    worker_a = SessionCache(idle_timeout=3600)
    worker_b = Replica(worker_a, idle_timeout=3600)
    client = Client()
    set_cache(worker_a)
    client.get("/login?user=ada")
    value = client.cookies["sessionid_v"].value
    client.cookies["sessionid_v"] = value[:-1] + ("A" if value[-1] != "A" else "B")
    set_cache(worker_b)
    # The forged version is not believed: B asks only for "any write since the last clear".
    assert client.get("/me").json() == {"user": "ada"}
    assert [w[1] for w in worker_b.waits] == [worker_b.cleared + 1]


def test_a_restarted_process_finds_sessions_in_its_store(tmp_path) -> None:
    from persist.jsonfile import JsonFileStore
    from persist.persistence import PersistConfig

    path = tmp_path / "sessions.json"
    before = SessionCache(persistence=Persistence(JsonFileStore(path), PersistConfig(mode="write_through")))
    set_cache(before)
    session = SessionStore()
    session["user"] = "ada"
    session.save()
    before.close()
    after = SessionCache(persistence=Persistence(JsonFileStore(path)))
    set_cache(after)
    assert SessionStore(session.session_key).get("user") == "ada"
    assert run(SessionStore(session.session_key).aget("user")) == "ada"
    after.close()


# -- the fail-safe: hub away past the outage budget ------------------------------------


@override_settings(MIDDLEWARE=RYW_MIDDLEWARE)
@pytest.mark.parametrize("companion", [True, False], ids=["companion-cookie", "session-cookie-only"])
def test_a_session_no_one_can_resolve_is_answered_503_not_a_new_session(companion: bool) -> None:
    from memsession.bus import MemoryBus, MemoryHub

    hub = MemoryHub()
    worker_a = SessionCache(bus=MemoryBus(hub), **CACHE_OPTIONS)
    worker_b = SessionCache(bus=MemoryBus(hub), outage_budget=0.05, **CACHE_OPTIONS)
    hub.partition(worker_b.bus)  # B hears nothing and can't ask: the hub is away for it
    client = Client()
    set_cache(worker_a)
    client.get("/login?user=ada")
    if not companion:
        del client.cookies["sessionid_v"]
    set_cache(worker_b)
    response = client.get("/me")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1" and response.headers["Cache-Control"] == "no-store"
    assert "sessionid" not in response.cookies  # the user's cookie is left alone
    assert worker_b.stats()["unavailable"] == 1
    hub.heal(worker_b.bus)
    assert client.get("/me").json() == {"user": "ada"}


def stored(cache: SessionCache) -> dict[str, tuple[int, dict]]:
    """Every session the cache holds: version and data by key."""
    return {key: (cache.held(key).version, cache.held(key).data) for key in cache}


@override_settings(MIDDLEWARE=RYW_MIDDLEWARE)
@pytest.mark.parametrize("logged_in", [True, False], ids=["grown", "new"])
def test_a_session_over_the_limit_is_one_500_and_one_log_line_and_stays_as_it_was(logged_in: bool, caplog) -> None:
    cache = SessionCache(**{**CACHE_OPTIONS, "max_session_bytes": 256})
    set_cache(cache)
    client = Client()
    if logged_in:
        client.get("/login?user=ada")
    before = stored(cache)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    response = client.get("/grow")
    assert response.status_code == 500 and b"size limit" in response.content
    assert "sessionid" not in response.cookies and "sessionid_v" not in response.cookies
    assert [r.levelname for r in caplog.records] == ["ERROR"], caplog.text
    assert "max_session_bytes=256" in caplog.records[0].getMessage()
    assert stored(cache) == before
    assert client.get("/me").json() == ({"user": "ada"} if logged_in else {})


# -- session fixation: Django's login() gives the session a new key -------------------------------


@pytest.fixture(scope="module")
def ada() -> str:
    """A real user in the in-memory auth tables; returns the password."""
    from django.contrib.auth.models import User

    management.call_command("migrate", verbosity=0)
    User.objects.create_user("ada", password="lovelace")
    return "lovelace"


@pytest.mark.parametrize("middleware", [DJANGO_MIDDLEWARE, RYW_MIDDLEWARE], ids=["django", "memsession"])
def test_login_gives_a_new_key_and_the_planted_one_is_gone_everywhere(middleware, ada, tmp_path) -> None:
    from memsession.bus import MemoryBus, MemoryHub
    from persist.jsonfile import JsonFileStore
    from persist.persistence import PersistConfig

    hub = MemoryHub()
    path = tmp_path / "sessions.json"
    worker_a = SessionCache(bus=MemoryBus(hub), **CACHE_OPTIONS,
                            persistence=Persistence(JsonFileStore(path), PersistConfig(mode="write_through")))
    worker_b = SessionCache(bus=MemoryBus(hub), **CACHE_OPTIONS)
    with override_settings(MIDDLEWARE=middleware):
        set_cache(worker_a)
        attacker = Client()
        attacker.get("/add?key=cart")  # the attacker's own session, to plant in the victim's browser
        planted = attacker.cookies["sessionid"].value
        victim = Client()
        victim.cookies["sessionid"] = planted
        assert victim.post("/auth-login", {"username": "ada", "password": ada}).content == b"ok"
        new = victim.cookies["sessionid"].value
        assert is_valid_sid(new) and new != planted

        def whoami(cache: SessionCache, key: str) -> tuple[bytes, dict]:
            """Who the cookie ``key`` is logged in as on ``cache``'s worker, and its session's keys."""
            set_cache(cache)
            client = Client()
            client.cookies["sessionid"] = key
            return client.get("/whoami").content, client.get("/me").json()

        for cache in (worker_a, worker_b):
            assert whoami(cache, new)[0] == b"ada"
            assert whoami(cache, planted) == (b"", {})  # not logged in, and the cart went with the login
        worker_a.close()  # the file has one owner at a time: worker a restarts on it
        restarted = SessionCache(persistence=Persistence(JsonFileStore(path)), **CACHE_OPTIONS)
        try:
            assert whoami(restarted, new)[0] == b"ada"
            assert whoami(restarted, planted) == (b"", {})
        finally:
            restarted.close()
            worker_b.close()


# -- two workers, overlapping saves of one session --------------------------------------------


@pytest.fixture
def two_workers():
    from memsession.bus import MemoryBus, MemoryHub

    hub = MemoryHub()
    a = SessionCache(bus=MemoryBus(hub), **CACHE_OPTIONS)
    b = SessionCache(bus=MemoryBus(hub), **CACHE_OPTIONS)
    a.hub = b.hub = hub  # type: ignore[attr-defined]
    yield a, b
    a.close()
    b.close()


def loaded_on(cache: SessionCache, sid: str) -> SessionStore:
    """A request's session on the worker of ``cache``, loaded (as a view reading it would)."""
    set_cache(cache)
    store = SessionStore(sid)
    assert store.get("user") == "ada"
    return store


def logged_in(cache: SessionCache) -> str:
    set_cache(cache)
    store = SessionStore()
    store["user"] = "ada"
    store.save()
    return store.session_key


def test_two_workers_saving_different_keys_and_an_expiry_keep_all_of_them(two_workers) -> None:
    a, b = two_workers
    sid = logged_in(a)
    on_a, on_b = loaded_on(a, sid), loaded_on(b, sid)
    on_a["cart"] = ["book"]
    on_a.set_expiry(600)
    on_b["theme"] = "dark"
    a.hub.hold()  # both save before either hears of the other's change, as bus latency allows
    on_a.save()
    on_b.save()
    a.hub.release()
    for cache in (a, b):
        assert cache.get(sid) == {"user": "ada", "cart": ["book"], "theme": "dark", "_session_expiry": 600}


def test_a_key_deleted_on_one_worker_while_another_sets_one_ends_with_both_changes(two_workers) -> None:
    a, b = two_workers
    sid = logged_in(a)
    set_cache(a)
    extra = SessionStore(sid)
    extra["x"] = 1
    extra.save()
    on_a, on_b = loaded_on(a, sid), loaded_on(b, sid)
    del on_a["x"]
    on_b["y"] = 2
    a.hub.hold()
    on_b.save()
    on_a.save()
    a.hub.release(reverse=True)
    assert a.get(sid) == b.get(sid) == {"user": "ada", "y": 2}


def test_cycle_key_on_one_worker_tells_a_concurrent_save_of_the_old_key(two_workers) -> None:
    # Django's login cycles the key; a request still holding the old key is told (UpdateError,
    # which Django's middleware turns into SessionInterrupted) rather than writing a dead session.
    a, b = two_workers
    sid = logged_in(a)
    on_a, on_b = loaded_on(a, sid), loaded_on(b, sid)
    on_a.cycle_key()
    on_b["theme"] = "dark"
    with pytest.raises(UpdateError):
        on_b.save()
    new = on_a.session_key
    assert new != sid and a.get(new) == b.get(new) == {"user": "ada"}
    assert a.get(sid) is None and b.get(sid) is None


def test_flush_on_one_worker_beats_a_concurrent_save(two_workers) -> None:
    a, b = two_workers
    sid = logged_in(a)
    on_a, on_b = loaded_on(a, sid), loaded_on(b, sid)
    on_a.flush()
    on_b["theme"] = "dark"
    with pytest.raises(UpdateError):
        on_b.save()
    assert a.get(sid) is None and b.get(sid) is None
