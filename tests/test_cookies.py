"""memsession.cookies: the pre-keyed HMAC signs exactly as HMAC-SHA256 over the derived key always has.

The codec's refusals (malformed, oversized, tampered, rotated away) are tested
with the web core in test_contrib_core.py; here: the signatures themselves.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memsession.cookies import CookieSigner
from memsession.errors import SignatureError
from memsession.session import new_id

SID = "A" * 21 + "b" * 22

#: Values signed before the keyed state was reused between requests: cookies that
#: browsers hold from an earlier release must keep verifying.
KNOWN = [
    (["bench-secret", "old"], "memsession.cookie", (SID, 1),
     f"{SID}.1.0ygxJP6bJEqwghtHqGUu38WNjeGfRT4k11I2Jeosg5k"),
    (["bench-secret", "old"], "memsession.cookie", (SID, 0x1A2333A00B70000, 0x5F7039D9817FCFE),
     f"{SID}.1a2333a00b70000-5f7039d9817fcfe.A-dyeIlANefg6xDLOzakFrcwojdB47XFTMbylTt0QDA"),
    (["bench-secret", "old"], "memsession.cookie", (SID, (1 << 64) - 1, (1 << 64) - 1),
     f"{SID}.ffffffffffffffff-ffffffffffffffff.7QMSaArCcmmHcHfQNURQod_7lM0i0dTD7aSKHPzYW-M"),
    ([b"\x00\xff"], "memsession.django.version", (SID, 5, 7),
     f"{SID}.5-7.OQ9J3hycYVmypecPdUfUnQA7QhP4ut2jiJx_M9JedJY"),
]


def reference_sign(secret: bytes, salt: str, sid: str, version: int, origin: int) -> str:
    """The codec's documented signature, computed the plain way: one-shot HMAC-SHA256."""
    key = hmac.digest(secret, b"memsession.cookie-signer|" + salt.encode("utf-8"), "sha256")
    payload = f"{sid}.{version:x}-{origin:x}" if origin else f"{sid}.{version:x}"
    mac = base64.urlsafe_b64encode(hmac.digest(key, payload.encode("ascii"), "sha256")).rstrip(b"=")
    return f"{payload}.{mac.decode('ascii')}"


@pytest.mark.parametrize("secrets, salt, stamp, value", KNOWN)
def test_known_values_sign_and_verify(secrets: list[str | bytes], salt: str, stamp: tuple[int, ...],
                                      value: str) -> None:
    signer = CookieSigner(secrets, salt=salt)
    assert signer.sign(*stamp) == value  # type: ignore[arg-type]
    sid, version, *origin = stamp
    assert signer.unsign_stamp(value) == (sid, version, origin[0] if origin else 0)


secrets_st = st.binary(min_size=1, max_size=80)
versions = st.integers(min_value=0, max_value=(1 << 64) - 1)


@given(secret=secrets_st, salt=st.text(max_size=20), version=versions, origin=versions)
def test_signs_as_one_shot_hmac_of_the_derived_key(secret: bytes, salt: str, version: int, origin: int) -> None:
    sid = new_id()
    assert CookieSigner([secret], salt=salt).sign(sid, version, origin) == reference_sign(
        secret, salt, sid, version, origin
    )


@given(old=secrets_st, new=secrets_st, version=versions, origin=versions)
def test_every_secret_verifies_only_the_first_signs(old: bytes, new: bytes, version: int, origin: int) -> None:
    sid = new_id()
    signer = CookieSigner([new, old])
    from_old = reference_sign(old, "memsession.cookie", sid, version, origin)
    assert signer.unsign_stamp(from_old) == (sid, version, origin)
    assert signer.sign(sid, version, origin) == reference_sign(new, "memsession.cookie", sid, version, origin)
    if old != new:
        with pytest.raises(SignatureError, match="signature"):
            CookieSigner([new]).unsign_stamp(from_old)


def test_signing_from_many_threads_shares_the_keyed_state_safely() -> None:
    signer = CookieSigner(["s3cret", "older"])
    stamps = [(new_id(), n, n * 7919) for n in range(1, 401)]
    expected = [reference_sign(b"s3cret", "memsession.cookie", *stamp) for stamp in stamps]
    results: list[list[str]] = []
    start = threading.Barrier(4)

    def sign_all() -> None:
        start.wait()
        results.append([signer.sign(*stamp) for stamp in stamps])

    threads = [threading.Thread(target=sign_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4
    # The signer's own keyed state was copied, never advanced: it still signs as at first.
    assert signer.sign(*stamps[0]) == expected[0]


def test_derived_key_is_the_documented_one() -> None:
    """The derivation named in the module docstring: HMAC-SHA256(secret, label) is the signing key."""
    key = hmac.new(b"k", b"memsession.cookie-signer|memsession.cookie", hashlib.sha256).digest()
    mac = base64.urlsafe_b64encode(hmac.digest(key, f"{SID}.1".encode(), "sha256")).rstrip(b"=").decode()
    assert CookieSigner([b"k"]).sign(SID, 1) == f"{SID}.1.{mac}"
