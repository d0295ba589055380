"""Config: defaults, overrides, and errors that name the option."""

from __future__ import annotations

import dataclasses

import pytest

from memsession import Config, ConfigError, SessionCache


def test_defaults_are_sane():
    cfg = Config()
    assert cfg.maxsize > 0 and cfg.idle_timeout and cfg.max_age and cfg.idle_timeout < cfg.max_age
    assert cfg.tombstone_ttl > 60  # outlives any request
    assert cfg.max_session_bytes == 64 * 1024


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().maxsize = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "option, value",
    [
        ("maxsize", 0),
        ("maxsize", 1.5),
        ("maxsize", True),
        ("idle_timeout", 0),
        ("idle_timeout", -1),
        ("idle_timeout", float("inf")),
        ("max_age", "1h"),
        ("touch_interval", -1),
        ("tombstone_ttl", 0),
        ("max_session_bytes", 10),
        ("protected_fraction", 1),
        ("protected_fraction", -0.1),
        ("protected_fraction", "0.8"),
        ("protected_fraction", None),
    ],
)
def test_invalid_values_fail_at_construction_naming_the_option(option, value):
    with pytest.raises(ConfigError) as info:
        Config(**{option: value})
    assert info.value.option == option
    assert option in str(info.value)
    with pytest.raises(ConfigError):
        SessionCache(**{option: value})


def test_unknown_option_is_an_error_listing_the_known_ones():
    with pytest.raises(ConfigError, match="idle_timeout"):
        SessionCache(idle_timout=5)


def test_options_override_a_config():
    base = Config(maxsize=10, idle_timeout=5)
    cfg = Config.from_options(base, idle_timeout=7)
    assert (cfg.maxsize, cfg.idle_timeout) == (10, 7)
    assert SessionCache(base, max_age=None).config.max_age is None


def test_timeouts_may_be_turned_off():
    cfg = Config(idle_timeout=None, max_age=None)
    assert cfg.idle_timeout is None and cfg.max_age is None
