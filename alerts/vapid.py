"""The hub's VAPID identity: one P-256 key pair, made on first start and kept for good.

Browsers bind each push subscription to the public key they were given, so a new key
would silently orphan every patrol's and desk's subscription: the key is created once,
written atomically and only ever loaded afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid

logger = logging.getLogger(__name__)


class VapidKeys:
    """The hub's signing key for Web Push, with the contact (`sub`) it signs as."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, subject: str) -> None:
        if not isinstance(private_key.curve, ec.SECP256R1):
            raise ValueError(f"VAPID needs a P-256 key, not {private_key.curve.name}")
        _check_subject(subject)
        self.private_key = private_key
        self.subject = subject
        # py_vapid's own check of `sub` refuses https URLs with a path, which RFC 8292
        # allows; ours is done above, so it is told not to repeat it.
        self.vapid = Vapid(private_key, conf={"no-strict": True})

    @classmethod
    def load_or_create(cls, path: Path, subject: str) -> VapidKeys:
        """The key kept at `path`; on first start a new one, written there with mode 0600."""
        _check_subject(subject)
        if not path.exists():
            _create_once(path)
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            logger.warning(
                "VAPID key file is readable by others", extra={"path": str(path), "mode": oct(mode)}
            )
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} does not hold an EC private key")
        return cls(key, subject)

    @property
    def public_key_b64url(self) -> str:
        """The uncompressed public point, base64url without padding (`applicationServerKey`)."""
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return base64.urlsafe_b64encode(point).rstrip(b"=").decode()

    @property
    def private_key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM, as kept in the key file."""
        return _pem(self.private_key)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _create_once(path: Path) -> None:
    """Write a new key to `path` unless one appears there first; never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_pem(ec.generate_private_key(ec.SECP256R1())))
            f.flush()
            os.fsync(f.fileno())
        try:
            # A link, not a rename: when two starts race, the first key stays and the
            # second start loads it instead of replacing it.
            os.link(tmp, path)
        except FileExistsError:
            return
        _fsync_dir(path.parent)
        logger.info("created VAPID key", extra={"path": str(path)})
    finally:
        os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_subject(subject: str) -> None:
    parts = urlsplit(subject)
    if parts.scheme == "mailto" and "@" in parts.path:
        return
    if parts.scheme == "https" and parts.netloc:
        return
    raise ValueError(f"VAPID subject must be a mailto: or https: URL, not {subject!r}")
