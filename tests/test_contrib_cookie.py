"""memsession.contrib.cookie: Set-Cookie built from prepared parts equals the header built from scratch."""

from __future__ import annotations

import email.utils

from hypothesis import given
from hypothesis import strategies as st

from memsession.contrib.config import WebConfig
from memsession.contrib.cookie import (
    Cookie,
    HttpDates,
    cookie_attributes,
    parse_cookie_header,
    set_cookie_header,
)

NOW = 1_780_000_000.25


def from_scratch(config: WebConfig, cookie: Cookie, now: float, permanent: bool) -> str:
    """The header as the codec documents it, assembled attribute by attribute."""
    if cookie.value is None:
        parts = [f"{config.cookie_name}=", "Max-Age=0", "Expires=Thu, 01 Jan 1970 00:00:00 GMT"]
    else:
        parts = [f"{config.cookie_name}={cookie.value}"]
        if cookie.expires is not None and permanent:
            parts.append(f"Max-Age={max(0, round(cookie.expires - now))}")
            parts.append("Expires=" + email.utils.formatdate(cookie.expires, usegmt=True))
    parts.append(f"Path={config.cookie_path}")
    if config.cookie_domain:
        parts.append(f"Domain={config.cookie_domain}")
    if config.cookie_secure:
        parts.append("Secure")
    if config.cookie_httponly:
        parts.append("HttpOnly")
    if config.cookie_samesite:
        parts.append(f"SameSite={config.cookie_samesite}")
    if config.cookie_partitioned:
        parts.append("Partitioned")
    return "; ".join(parts)


@st.composite
def configs(draw: st.DrawFn) -> WebConfig:
    secure = draw(st.booleans())
    samesite = draw(st.sampled_from(["Lax", "Strict", None] + (["None"] if secure else [])))
    return WebConfig(
        secret_keys=("s",),
        cookie_name=draw(st.sampled_from(["session", "sid", "__Host-s"])),
        cookie_domain=draw(st.sampled_from([None, "example.org"])),
        cookie_path=draw(st.sampled_from(["/", "/app"])),
        cookie_secure=secure,
        cookie_httponly=draw(st.booleans()),
        cookie_samesite=samesite,
        cookie_partitioned=secure and draw(st.booleans()),
        permanent=draw(st.booleans()),
    )


cookies = st.builds(
    Cookie,
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.-]{1,60}", fullmatch=True)),
    st.one_of(st.none(), st.floats(min_value=NOW - 100, max_value=NOW + 10 * 365 * 86400)),
)


@given(config=configs(), cookie=cookies, permanent=st.one_of(st.none(), st.booleans()))
def test_prepared_header_equals_the_one_built_from_scratch(config: WebConfig, cookie: Cookie,
                                                          permanent: bool | None) -> None:
    dates = HttpDates()
    attributes = cookie_attributes(config)
    expected = from_scratch(config, cookie, NOW, config.permanent if permanent is None else permanent)
    for _ in range(2):  # the second time from the remembered date
        assert set_cookie_header(config, cookie, lambda: NOW, permanent=permanent, attributes=attributes,
                                 http_date=dates) == expected
    assert set_cookie_header(config, cookie, lambda: NOW, permanent=permanent) == expected


@given(st.lists(st.floats(min_value=0, max_value=2**33), min_size=1, max_size=30))
def test_http_dates_equal_formatdate_whatever_the_order(times: list[float]) -> None:
    dates = HttpDates()
    for when in times + sorted(times) + times[::-1]:
        assert dates(when) == email.utils.formatdate(when, usegmt=True)


def test_a_second_boundary_gives_the_next_date() -> None:
    dates = HttpDates()
    assert dates(NOW) == dates(NOW + 0.5)
    assert dates(NOW + 0.75) != dates(NOW)  # 1_780_000_001.0: the next second


@given(config=configs(), value=st.from_regex(r"[A-Za-z0-9_.-]{1,60}", fullmatch=True))
def test_the_header_reads_back(config: WebConfig, value: str) -> None:
    header = set_cookie_header(config, Cookie(value, NOW + 60), lambda: NOW, permanent=True)
    pair, *attributes = header.split("; ")
    assert pair == f"{config.cookie_name}={value}"
    named = dict(a.partition("=")[::2] for a in attributes)
    assert named["Path"] == config.cookie_path and named["Max-Age"] == "60"
    assert email.utils.parsedate_to_datetime(named["Expires"]).timestamp() == int(NOW + 60)
    assert parse_cookie_header(f"a=1; {config.cookie_name}={value}; b=2", config.cookie_name) == [value]
