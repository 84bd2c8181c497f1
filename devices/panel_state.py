"""A panel's durable state: the next event `seq` and the events still waiting for a receipt."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _seq_from_clock() -> int:
    return time.time_ns() // 1_000_000


class PanelStateFile:
    """`{state_dir}/{panel_id}.json`, saved atomically on every change; safe across threads.

    Every change is on disk before the method returns, so the caller may publish only
    afterwards: a reboot then never reuses a seq and never forgets an unreceipted event.
    """

    def __init__(self, state_dir: Path, panel_id: str) -> None:
        self.path = Path(state_dir) / f"{panel_id}.json"
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._next_seq, self._pending = self._load()

    @property
    def next_seq(self) -> int:
        """The seq the next reserved event will get."""
        with self._lock:
            return self._next_seq

    def reserve_seq(self) -> int:
        """Take the next seq; it is never handed out again, even after a reboot."""
        with self._lock:
            seq = self._next_seq
            self._commit(seq + 1, self._pending)
            return seq

    def add_new(self, build: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        """Reserve a seq, build the event with it and keep it pending, in one durable write."""
        with self._lock:
            seq = self._next_seq
            payload = build(seq)
            if payload.get("seq") != seq:
                raise ValueError("the built event must carry the reserved seq")
            self._commit(seq + 1, {**self._pending, seq: payload})
            return payload

    def add_pending(self, payload: dict[str, Any]) -> None:
        """Keep an event (keyed by its `seq`) until its receipt arrives."""
        seq = payload["seq"]
        with self._lock:
            self._commit(max(self._next_seq, seq + 1), {**self._pending, seq: payload})

    def remove_pending(self, seq: int) -> bool:
        """Forget a receipted event; False when it was not pending."""
        with self._lock:
            if seq not in self._pending:
                return False
            self._commit(self._next_seq, {s: p for s, p in self._pending.items() if s != seq})
            return True

    def pending(self) -> list[dict[str, Any]]:
        """The events still waiting for a receipt, oldest seq first."""
        with self._lock:
            return [dict(self._pending[seq]) for seq in sorted(self._pending)]

    def _load(self) -> tuple[int, dict[int, dict[str, Any]]]:
        try:
            return self._parse(self.path.read_bytes())
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.warning(
                "panel state unreadable, starting fresh",
                extra={"path": str(self.path), "error": str(exc)},
            )
        # No trustworthy record of the seqs used so far: a first boot looks the same as a
        # lost file. The hub deduplicates on (panel, seq), so a reused seq would turn a new
        # alarm into a "duplicate" of an old one. Epoch ms is above every seq this panel
        # used before, unless it ever sent more than one event per millisecond on average.
        return _seq_from_clock(), {}

    @staticmethod
    def _parse(raw: bytes) -> tuple[int, dict[int, dict[str, Any]]]:
        obj = json.loads(raw)
        next_seq = obj["next_seq"]
        if not isinstance(next_seq, int) or isinstance(next_seq, bool) or next_seq < 0:
            raise ValueError("next_seq is not a non-negative integer")
        pending: dict[int, dict[str, Any]] = {}
        for payload in obj["pending"]:
            seq = payload["seq"]
            if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < next_seq:
                raise ValueError(f"pending event has a bad seq {seq!r}")
            pending[seq] = payload
        return next_seq, pending

    def _commit(self, next_seq: int, pending: dict[int, dict[str, Any]]) -> None:
        # Memory changes only once the disk has it, so a failed write (full disk, an event
        # that is not JSON) leaves both as they were.
        state = {"next_seq": next_seq, "pending": [pending[s] for s in sorted(pending)]}
        data = json.dumps(state, separators=(",", ":"), ensure_ascii=False).encode()
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)
        self._next_seq, self._pending = next_seq, pending


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
