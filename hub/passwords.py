"""Password hashing with scrypt from the standard library.

A hash is `scrypt$n$r$p$salt_b64$hash_b64`: the cost travels with it, so raising the
cost later still verifies the old hashes. Hashing takes tens of milliseconds of CPU:
code on the event loop runs these functions with `asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

MIN_LENGTH = 10
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
# scrypt needs 128 * n * r bytes (32 MiB here); OpenSSL's default ceiling is just that.
_MAX_MEM = 64 * 1024 * 1024
# Bounds on costs read from a stored hash, so a tampered row cannot stall the hub.
_MAX_N = 2**20


def hash_password(password: str) -> str:
    """The encoded scrypt hash of a new password; ValueError if it is too short."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"a password needs at least {MIN_LENGTH} characters")
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, _KEY_BYTES)
    return "$".join(
        ["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(key)]
    )


def verify_password(password: str, encoded: str) -> bool:
    """Whether the password matches the encoded hash; False for a malformed hash."""
    try:
        scheme, n_text, r_text, p_text, salt_text, key_text = encoded.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt, expected = _unb64(salt_text), _unb64(key_text)
    except (ValueError, binascii.Error):
        return False
    if (
        scheme != "scrypt" or not 1 < n <= _MAX_N or n & (n - 1)
        or not 1 <= r <= 32 or not 1 <= p <= 16 or not salt or not 16 <= len(expected) <= 64
    ):
        return False
    try:
        key = _scrypt(password, salt, n, r, p, len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(key, expected)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEM, dklen=dklen
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
