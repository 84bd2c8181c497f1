"""Panels' signing keys, in memory for the hot path, refreshed from the database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devices.protocol import Reason
from devices.signing import SIG_FIELD, verify_event


@dataclass(frozen=True, slots=True)
class PanelKey:
    key: bytes
    require_signed: bool


class SignatureRefused(Exception):
    """The event's signature is missing, wrong, or cannot be checked."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class KeyRing:
    """Which panels sign, with which key; `check` decides on one event."""

    def __init__(self) -> None:
        self._keys: dict[str, PanelKey] = {}

    def replace(self, keys: dict[str, PanelKey]) -> None:
        """Take the provisioned keys as they are now (a re-provisioned panel's new key)."""
        self._keys = dict(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, panel_id: str, event: dict[str, Any]) -> bool:
        """True when the event is signed and the signature holds; False when unsigned and
        that is allowed. SignatureRefused otherwise."""
        entry = self._keys.get(panel_id)
        signed = SIG_FIELD in event
        if entry is None:
            if signed:
                raise SignatureRefused(
                    Reason.BAD_SIGNATURE, "this panel has no key at the hub; provision it"
                )
            return False
        if not signed:
            if entry.require_signed:
                raise SignatureRefused(Reason.UNSIGNED, "events of this panel must be signed")
            return False
        if not verify_event(event, entry.key):
            raise SignatureRefused(Reason.BAD_SIGNATURE, "the signature does not match")
        return True


class KeyRefresher:
    """The named job `key-refresh`: reloads panels' keys, so a re-provisioned panel's new
    key (and a stolen panel's revoked one) takes effect without a restart."""

    name = "key-refresh"

    def __init__(self, store: Any, ring: KeyRing) -> None:
        self.store = store  # CredentialStore
        self.ring = ring

    async def run_once(self) -> float | None:
        credentials = await self.store.all()
        self.ring.replace({c.panel_id: PanelKey(c.hmac_key, c.require_signed) for c in credentials})
        return None  # again on the runner's tick
