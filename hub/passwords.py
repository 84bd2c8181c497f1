"""Password and PIN hashing with scrypt from the standard library.

A hash is `scrypt$n$r$p$salt_b64$hash_b64`: the cost travels with it, so raising the
cost later still verifies the old hashes. A password takes tens of milliseconds of CPU:
code on the event loop runs these functions with `asyncio.to_thread`. A PIN is hashed
at a far lower cost (see `hash_pin`) and is checked with `verify_password` too.
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
# Household PINs: a hub of 10,000 households hashes 20,000 of them when it starts from a
# registry written by hand, and checks two on every cancel. No cost makes a 4-digit PIN
# safe once its hash is out (10,000 guesses), so PINs and their hashes never leave the
# hub; the salt and this cost (about 0.1 ms, 64 KiB) only keep a stolen registry file
# from giving up every household's PIN at hash speed.
PIN_SCRYPT_N = 2**6


def hash_password(password: str) -> str:
    """The encoded scrypt hash of a new password; ValueError if it is too short."""
    if len(password) < MIN_LENGTH:
        raise ValueError(f"a password needs at least {MIN_LENGTH} characters")
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, _KEY_BYTES)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(key)])


def hash_pin(pin: str) -> str:
    """The encoded scrypt hash of a PIN, at the PIN cost (`PIN_SCRYPT_N`)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _scrypt(pin, salt, PIN_SCRYPT_N, SCRYPT_R, SCRYPT_P, _KEY_BYTES)
    return "$".join(
        ["scrypt", str(PIN_SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(key)]
    )


def hash_cost(encoded: str) -> tuple[int, int, int] | None:
    """The (n, r, p) of a hash `verify_password` can check; None for anything else."""
    decoded = _decode(encoded)
    return decoded[:3] if decoded is not None else None


def verify_password(password: str, encoded: str) -> bool:
    """Whether the password matches the encoded hash; False for a malformed hash."""
    decoded = _decode(encoded)
    if decoded is None:
        return False
    n, r, p, salt, expected = decoded
    try:
        key = _scrypt(password, salt, n, r, p, len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(key, expected)


def _decode(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    """(n, r, p, salt, key) of a well-formed hash; None for anything else."""
    try:
        scheme, n_text, r_text, p_text, salt_text, key_text = encoded.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt, expected = _unb64(salt_text), _unb64(key_text)
    except (ValueError, binascii.Error):
        return None
    if (
        scheme != "scrypt"
        or not 1 < n <= _MAX_N
        or n & (n - 1)
        or not 1 <= r <= 32
        or not 1 <= p <= 16
        or not salt
        or not 16 <= len(expected) <= 64
    ):
        return None
    return n, r, p, salt, expected


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=_MAX_MEM, dklen=dklen
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
