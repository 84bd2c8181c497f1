"""Password hashes in Mosquitto 2.0's password-file format: `$7$iterations$salt$hash`.

`$7$` is PBKDF2-HMAC-SHA512 with a 12-byte salt and a 64-byte hash, both base64 with
padding, exactly as `mosquitto_passwd` writes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

# mosquitto_passwd's default. Low, but the broker pays it on every connect (a whole fleet
# reconnects after a broker restart), and panel passwords are random with ≥ 144 bits:
# nobody guesses them, however cheap a guess is.
DEFAULT_ITERATIONS = 101
_SALT_BYTES = 12
_HASH_BYTES = 64
# Bound on iterations read back from a file, so a tampered line cannot stall a check.
_MAX_ITERATIONS = 10_000_000


def hash_mosquitto_password(password: str, *, iterations: int = DEFAULT_ITERATIONS) -> str:
    """The `$7$…` line part Mosquitto accepts for this password, with a fresh random salt."""
    if not password:
        raise ValueError("a broker password cannot be empty")
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1 to {_MAX_ITERATIONS}")
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _pbkdf2(password, salt, iterations)
    return f"$7${iterations}${_b64(salt)}${_b64(digest)}"


def verify_mosquitto_password(password: str, encoded: str) -> bool:
    """Whether the password matches a `$7$` hash; False for anything malformed."""
    try:
        empty, scheme, iterations_text, salt_text, hash_text = encoded.split("$")
        iterations = int(iterations_text)
        salt = base64.b64decode(salt_text, validate=True)
        expected = base64.b64decode(hash_text, validate=True)
    except (ValueError, binascii.Error):
        return False
    if empty or scheme != "7" or not 1 <= iterations <= _MAX_ITERATIONS or not salt:
        return False
    if len(expected) != _HASH_BYTES:
        return False
    return hmac.compare_digest(_pbkdf2(password, salt, iterations), expected)


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, _HASH_BYTES)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
