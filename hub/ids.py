"""Identifiers the hub mints: time-ordered, protocol-valid ([a-z0-9-]), unguessable."""

from __future__ import annotations

import secrets

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_alarm_id(now_ms: int) -> str:
    """An alarm id like `a-01jd3k…`: sorts by creation time, 26 characters after the prefix."""
    return "a-" + _base32(now_ms, 10) + _base32(secrets.randbits(80), 16)
