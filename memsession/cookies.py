"""The session cookie: a signed session id plus the stamp of its last write.

Cookie value, all ASCII, at most ``max_size`` characters::

    <sid: 43 chars base64url> "." <version: lowercase hex> ["-" <origin: lowercase hex>] "." <mac: 43 chars base64url>

The stamp ``(version, origin)`` names the user's last change (the writer's
origin id is what read-your-writes looks up in a copy's ``seen``: with
per-key merging a copy can be newer than a change and still lack it).
A value without ``-<origin>`` (written before origins were signed) verifies
with origin 0: then only the version is compared.

``mac`` is HMAC-SHA256 over ``<sid>.<stamp>`` with a key derived from the
secret and a salt, so the same ``SECRET_KEY`` used elsewhere in an app never
signs anything this codec would accept. Several secrets may be configured:
the first signs, every one verifies (key rotation). Verification is constant
time per key, and an oversized value is refused before any HMAC is computed.

The id alone authenticates the user; the signature makes a forged or mangled
cookie cost nothing server-side (no cache lookup), and the version lets a
worker tell that its copy of the session is older than the user's last write.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

from .errors import ConfigError, SignatureError
from .session import SID_LENGTH, is_valid_sid

__all__ = ["CookieSigner"]

_MAC_LENGTH = 43  # 32 bytes base64url without padding
_MAX_VERSION_HEX = 16  # versions are unsigned 64-bit
_HEX = frozenset("0123456789abcdef")
#: Most verified values remembered (about 20 MB at the limit).
_VERIFIED_MAX = 100_000
#: sid, two dots, version, dash, origin, mac: the longest value this codec ever produces.
LONGEST_VALUE = SID_LENGTH + 2 + 2 * _MAX_VERSION_HEX + 1 + _MAC_LENGTH


def _as_bytes(option: str, secret: object) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or not secret:
        raise ConfigError(option, secret, "each secret must be a non-empty str or bytes")
    return secret


class CookieSigner:
    """Signs and verifies session cookie values.

    ``secret_keys``: newest first; values signed with any of them verify.
    ``salt`` separates this use of the secrets from any other.
    """

    def __init__(
        self,
        secret_keys: Iterable[str | bytes] | str | bytes,
        *,
        salt: str = "memsession.cookie",
        max_size: int = LONGEST_VALUE,
    ) -> None:
        if isinstance(secret_keys, (str, bytes)):
            secret_keys = [secret_keys]
        try:
            secrets = [_as_bytes("secret_keys", s) for s in secret_keys]
        except TypeError as exc:
            raise ConfigError("secret_keys", secret_keys, "must be a secret or a list of secrets") from exc
        if not secrets:
            raise ConfigError("secret_keys", secrets, "at least one secret is required")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < LONGEST_VALUE:
            raise ConfigError("max_size", max_size, f"must be an int >= {LONGEST_VALUE}")
        label = b"memsession.cookie-signer|" + salt.encode("utf-8")
        # Derive once, and key an HMAC once per secret: a request copies the
        # keyed state, so it pays neither the key schedule nor the digest's
        # lookup by name (half the cost of a one-shot hmac.digest per cookie).
        keys = [hmac.new(s, label, hashlib.sha256).digest() for s in secrets]
        self._keyed = [hmac.new(key, digestmod=hashlib.sha256) for key in keys]
        self.max_size = max_size
        # Values that verified, so a returning cookie costs a dict lookup, not
        # an HMAC: a value that verified once verifies for this signer's life.
        # Only values carrying a valid MAC get in, so junk can't flush it out.
        self._verified: dict[str, tuple[str, int, int]] = {}

    @staticmethod
    def _mac(keyed: hmac.HMAC, payload: bytes) -> bytes:
        """The base64url MAC (no padding) of ``payload`` under the pre-keyed ``keyed``."""
        mac = keyed.copy()
        mac.update(payload)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")

    def sign(self, sid: str, version: int, origin: int = 0) -> str:
        """The cookie value for ``sid`` whose last write had stamp ``(version, origin)`` (origin 0: unknown)."""
        payload = f"{sid}.{version:x}-{origin:x}" if origin else f"{sid}.{version:x}"
        return f"{payload}.{self._mac(self._keyed[0], payload.encode('ascii')).decode('ascii')}"

    def unsign(self, value: str) -> tuple[str, int]:
        """``(sid, version)`` from a cookie value, or ``SignatureError`` saying why not."""
        sid, version, _origin = self.unsign_stamp(value)
        return sid, version

    def unsign_stamp(self, value: str) -> tuple[str, int, int]:
        """``(sid, version, origin)`` from a cookie value (origin 0 if it names none), or ``SignatureError``."""
        known = self._verified.get(value) if type(value) is str else None
        if known is not None:
            return known
        if not isinstance(value, str):
            raise SignatureError("cookie value is not a string")
        if len(value) > self.max_size:
            raise SignatureError("cookie value is oversized")
        parts = value.split(".")
        if len(parts) != 3:
            raise SignatureError("cookie value is malformed")
        sid, stamp, mac = parts
        version_hex, dash, origin_hex = stamp.partition("-")
        if (
            not is_valid_sid(sid)
            or not 0 < len(version_hex) <= _MAX_VERSION_HEX
            or not _HEX.issuperset(version_hex)
            or (dash and not (0 < len(origin_hex) <= _MAX_VERSION_HEX and _HEX.issuperset(origin_hex)))
            or len(mac) != _MAC_LENGTH
            or not mac.isascii()
        ):
            raise SignatureError("cookie value is malformed")
        payload = f"{sid}.{stamp}".encode("ascii")
        mac_bytes = mac.encode("ascii")
        for keyed in self._keyed:
            if hmac.compare_digest(self._mac(keyed, payload), mac_bytes):
                verified = (sid, int(version_hex, 16), int(origin_hex, 16) if dash else 0)
                if len(self._verified) >= _VERIFIED_MAX:
                    self._verified.clear()  # crude but bounded; refills at one HMAC per value
                self._verified[value] = verified
                return verified
        raise SignatureError("cookie signature does not match")
