"""Signed panel events: `sig` is HMAC-SHA256 over the event's canonical JSON without `sig`.

The hub and every panel sign and check through this module, so both sides hash exactly
the same bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from devices.protocol import canonical_json

SIG_FIELD = "sig"


def event_signature(payload: dict[str, Any], key: bytes) -> str:
    """Hex HMAC-SHA256 of the payload's canonical JSON, its own `sig` field left out."""
    unsigned = {k: v for k, v in payload.items() if k != SIG_FIELD}
    return hmac.new(key, canonical_json(unsigned).encode("utf-8"), hashlib.sha256).hexdigest()


def sign_event(payload: dict[str, Any], key: bytes) -> dict[str, Any]:
    """A copy of the event with `sig` set (any `sig` it had is replaced)."""
    return {**payload, SIG_FIELD: event_signature(payload, key)}


def verify_event(payload: dict[str, Any], key: bytes) -> bool:
    """True when `sig` is the event's signature under key; compared in constant time."""
    sig = payload.get(SIG_FIELD)
    if not isinstance(sig, str):
        return False
    try:
        expected = event_signature(payload, key)
    except (TypeError, ValueError):  # not JSON-serialisable: cannot be a signed event
        return False
    return hmac.compare_digest(sig.encode("utf-8"), expected.encode("ascii"))
