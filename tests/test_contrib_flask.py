"""Flask integration: a real Flask app (and flask-login) through Flask's test client."""

from __future__ import annotations

import email.utils
import logging
from datetime import timedelta

import pytest
from flask import Flask, jsonify, request, session
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user, logout_user

from memsession import ConfigError, SessionCache
from memsession.contrib.flask import FlaskSession, MemSession, MemSessionInterface

SECRET = "flask-test-secret"


class User(UserMixin):
    def __init__(self, uid: str) -> None:
        self.id = uid


def make_app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, **config)
    MemSession(app)

    @app.get("/read")
    def read():
        return jsonify(dict(session))

    @app.post("/set")
    def set_values():
        session.update(request.get_json())
        return "ok"

    @app.post("/append")
    def append():
        session.setdefault("cart", [])
        session["cart"].append(request.args["item"])
        return "ok"

    @app.post("/permanent")
    def permanent():
        session.permanent = True
        session["p"] = 1
        return "ok"

    @app.post("/clear")
    def clear():
        session.clear()
        return "ok"

    @app.post("/regenerate")
    def regenerate():
        session.regenerate()
        if "big" in request.args:
            session["big"] = "x" * int(request.args["big"])
        return "ok"

    @app.get("/read-varying")
    def read_varying():
        response = jsonify(dict(session))
        response.headers["Vary"] = "Accept-Encoding"
        return response

    @app.post("/boom")
    def boom():
        session["when"] = object()
        return "ok"

    return app


def cookie_of(response) -> str | None:
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith("session="):
            return header
    return None


@pytest.fixture
def app() -> Flask:
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def test_installs_the_session_interface(app) -> None:
    assert isinstance(app.session_interface, MemSessionInterface)
    assert app.extensions["memsession"].cache.config.idle_timeout == 31 * 24 * 3600


def test_anonymous_reads_set_no_cookie_and_store_nothing(app, client) -> None:
    for _ in range(20):
        response = client.get("/read")
        assert response.json == {} and cookie_of(response) is None
    assert app.extensions["memsession"].cache.length() == 0


def test_write_then_read(client) -> None:
    response = client.post("/set", json={"user": "ada"})
    header = cookie_of(response)
    assert header is not None
    for flag in ("HttpOnly", "SameSite=Lax", "Path=/", "Expires=", "Max-Age="):
        assert flag in header
    assert client.get("/read").json == {"user": "ada"}


def test_nested_mutation_is_saved(client) -> None:
    client.post("/append?item=apple")
    client.post("/append?item=pear")
    assert client.get("/read").json == {"cart": ["apple", "pear"]}


def test_reads_do_not_resend_the_cookie_but_vary_on_it(client) -> None:
    client.post("/set", json={"user": "ada"})
    response = client.get("/read")
    assert cookie_of(response) is None
    assert "Cookie" in response.headers["Vary"]


def test_vary_cookie_joins_what_the_view_varies_on(client) -> None:
    client.post("/set", json={"user": "ada"})
    response = client.get("/read-varying")
    assert response.json == {"user": "ada"}
    assert response.headers.getlist("Vary") == ["Accept-Encoding, Cookie"]
    assert client.get("/read").headers.getlist("Vary") == ["Cookie"]


def test_set_cookie_is_the_managers_header(app, client) -> None:
    """The header Flask sends is the one the WSGI and ASGI integrations send, attribute for attribute."""
    manager = app.extensions["memsession"]
    header = cookie_of(client.post("/set", json={"user": "ada"}))
    value = client.get_cookie("session").value
    record = manager.cache.record(manager.signer.unsign(value)[0])
    pair, max_age, expires, *rest = header.split("; ")
    assert pair == f"session={value}"
    assert expires == "Expires=" + email.utils.formatdate(record.expires, usegmt=True)
    assert max_age.startswith("Max-Age=") and 0 < int(max_age[8:]) <= manager.cache.config.idle_timeout
    assert rest == ["Path=/", "HttpOnly", "SameSite=Lax"]
    deleted = cookie_of(client.post("/clear"))
    assert deleted == "session=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Path=/; HttpOnly; SameSite=Lax"


def test_the_first_session_cookie_that_verifies_counts(app, client) -> None:
    """Browsers may send the name twice (another path or domain): a stale one never hides the live one."""
    client.post("/set", json={"user": "ada"})
    live = client.get_cookie("session").value
    stale = live[:-2] + ("AA" if not live.endswith("AA") else "BB")
    for header in (f"session={stale}; session={live}", f"theme=dark; session={live}; session={stale}",
                   f'session="{live}"'):
        response = app.test_client(use_cookies=False).get("/read", headers={"Cookie": header})
        assert response.json == {"user": "ada"}, header
    assert app.test_client(use_cookies=False).get("/read", headers={"Cookie": f"xsession={live}"}).json == {}


def test_tampered_cookie_is_a_fresh_session_and_is_removed(client) -> None:
    client.post("/set", json={"user": "ada"})
    value = client.get_cookie("session").value
    client.set_cookie("session", value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    response = client.get("/read")
    assert response.status_code == 200 and response.json == {}
    assert "Max-Age=0" in cookie_of(response)


@pytest.mark.parametrize("bad", ["", "x" * 4000, "no.dots.here", "%00"])
def test_garbage_cookies_never_error(client, bad) -> None:
    client.set_cookie("session", bad)
    assert client.get("/read").status_code == 200


def test_clear_logs_out_and_the_old_cookie_is_dead(client) -> None:
    client.post("/set", json={"user": "ada"})
    old = client.get_cookie("session").value
    response = client.post("/clear")
    assert "Max-Age=0" in cookie_of(response)
    client.set_cookie("session", old)
    assert client.get("/read").json == {}


def test_regenerate_issues_a_new_cookie_and_kills_the_old(client) -> None:
    client.post("/set", json={"user": "ada"})
    old = client.get_cookie("session").value
    client.post("/regenerate")
    new = client.get_cookie("session").value
    assert new.split(".")[0] != old.split(".")[0]
    assert client.get("/read").json == {"user": "ada"}
    client.set_cookie("session", old)
    assert client.get("/read").json == {}


def test_non_json_value_is_a_server_error_not_silent_loss(app, client) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert client.post("/boom").status_code == 500


def test_session_permanent_false_gives_a_browser_session_cookie() -> None:
    client = make_app(SESSION_PERMANENT=False).test_client()
    header = cookie_of(client.post("/set", json={"a": 1}))
    assert "Expires=" not in header and "Max-Age=" not in header
    header = cookie_of(client.post("/permanent"))
    assert "Expires=" in header


def test_flask_config_names_are_honoured() -> None:
    app = make_app(
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_DOMAIN="example.org",
        SESSION_COOKIE_PATH="/app",
        SESSION_COOKIE_PARTITIONED=True,
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=5),
        MEMSESSION_MAXSIZE=10,
        MEMSESSION_MAX_AGE=600,
        MEMSESSION_CONSISTENCY_TIMEOUT=0.2,
    )
    manager = app.extensions["memsession"]
    assert manager.cache.config.idle_timeout == 300
    assert (manager.cache.config.maxsize, manager.cache.config.max_age) == (10, 600)
    assert manager.config.consistency_timeout == 0.2
    response = app.test_client().post("/set", json={"a": 1}, base_url="https://example.org/app")
    header = response.headers["Set-Cookie"]
    assert header.startswith("sid=")
    for flag in ("Secure", "SameSite=Strict", "Domain=example.org", "Path=/app", "Partitioned"):
        assert flag in header


def test_secret_key_fallbacks_rotate() -> None:
    old = make_app()
    client = old.test_client()
    client.post("/set", json={"user": "ada"})
    value = client.get_cookie("session").value
    cache = old.extensions["memsession"].cache
    rotated = Flask(__name__)
    rotated.config.update(SECRET_KEY="new-secret", SECRET_KEY_FALLBACKS=[SECRET])
    MemSession(rotated, cache=cache)
    rotated.add_url_rule("/read", view_func=lambda: jsonify(dict(session)))
    other = rotated.test_client()
    other.set_cookie("session", value)
    assert other.get("/read").json == {"user": "ada"}


def test_missing_secret_key_fails_at_init() -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        MemSession(Flask(__name__))


def test_init_app_later_with_a_shared_cache() -> None:
    cache = SessionCache()
    ext = MemSession(cache=cache)
    app = Flask(__name__)
    app.config["SECRET_KEY"] = SECRET
    manager = ext.init_app(app)
    assert manager.cache is cache


def test_session_object_is_flask_compatible(app) -> None:
    with app.test_request_context("/"):
        assert isinstance(session._get_current_object(), FlaskSession)
        assert session.permanent is False
        session["x"] = 1
        assert session.modified


def test_flask_login() -> None:
    app = make_app()
    login_manager = LoginManager(app)
    login_manager.user_loader(User)

    @app.post("/login")
    def login():
        session.regenerate()
        login_user(User(request.args["uid"]))
        return "ok"

    @app.get("/me")
    @login_required
    def me():
        return current_user.id

    @app.post("/logout")
    def logout():
        logout_user()
        return "ok"

    client = app.test_client()
    assert client.get("/me").status_code == 401
    client.post("/login?uid=ada")
    assert client.get("/me").text == "ada"
    logged_in = client.get_cookie("session").value
    client.post("/logout")
    assert client.get("/me").status_code == 401
    client.set_cookie("session", logged_in)  # replaying the logged-in cookie
    assert client.get("/me").status_code == 401


def stored(app: Flask) -> dict[str, tuple[int, dict]]:
    """Every session the app's cache holds: version and data by key."""
    cache = app.extensions["memsession"].cache
    return {key: (cache.held(key).version, cache.held(key).data) for key in cache}


def test_a_session_grown_past_the_limit_is_one_500_and_one_log_line_and_stays_as_it_was(caplog) -> None:
    app = make_app(MEMSESSION_MAX_SESSION_BYTES=256)
    client = app.test_client()
    client.post("/set", json={"a": 1})
    before = stored(app)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    response = client.post("/set", json={"big": "x" * 1000})
    assert response.status_code == 500
    assert cookie_of(response) is None
    assert [r.levelname for r in caplog.records] == ["ERROR"], caplog.text
    message = caplog.records[0].getMessage()
    assert "max_session_bytes=256" in message and "xxx" not in message
    assert not any(sid in message for sid in before)
    assert stored(app) == before
    assert client.get("/read").get_json() == {"a": 1}


def test_a_regenerated_session_over_the_limit_keeps_the_old_one(caplog) -> None:
    # The old id used to be destroyed before the new one was refused: a logout.
    app = make_app(MEMSESSION_MAX_SESSION_BYTES=256)
    client = app.test_client()
    client.post("/set", json={"a": 1})
    before = stored(app)
    response = client.post("/regenerate?big=1000")
    assert response.status_code == 500 and cookie_of(response) is None
    assert stored(app) == before
    assert client.get("/read").get_json() == {"a": 1}


def test_a_new_session_over_the_limit_stores_nothing_and_sets_no_cookie(caplog) -> None:
    app = make_app(MEMSESSION_MAX_SESSION_BYTES=256)
    caplog.set_level(logging.DEBUG)
    response = app.test_client().post("/set", json={"big": "x" * 1000})
    assert response.status_code == 500 and cookie_of(response) is None
    assert len(caplog.records) == 1, caplog.text
    assert stored(app) == {}


def test_get_session_is_flask_session_typed() -> None:
    from memsession.contrib.flask import FlaskSession, get_session

    app = make_app()

    @app.post("/typed-regenerate")
    def typed_regenerate():
        typed = get_session()
        assert isinstance(typed, FlaskSession) and typed is session._get_current_object()
        typed.regenerate()
        return "ok"

    client = app.test_client()
    client.post("/set", json={"user": "ada"})
    before = client.get_cookie("session").value
    client.post("/typed-regenerate")
    assert client.get_cookie("session").value.split(".")[0] != before.split(".")[0]
    assert client.get("/read").get_json() == {"user": "ada"}
    plain = Flask(__name__)
    plain.secret_key = "k"
    with plain.test_request_context("/"), pytest.raises(TypeError, match="MemSession"):
        get_session()
