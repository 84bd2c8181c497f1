"""SQL for alarms, their timelines and the panel events that made them.

`AlarmTx` works inside one write transaction on the writer thread; `AlarmStore` gives
the async, read-only views the web and the tests use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from hub.db import Database


@dataclass(frozen=True, slots=True)
class Alarm:
    id: str
    unit_id: str
    household_id: str
    panel_id: str
    kind: str
    state: str
    raised_at: int
    panel_ts: int
    seq: int
    updated_at: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """A panel event as first stored, with the answer it got."""

    panel_id: str
    seq: int
    type: str
    payload: str
    alarm_id: str | None
    status: str
    error: str | None
    received_at: int


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    id: int
    alarm_id: str
    at: int
    entry: str
    state: str
    actor: str | None
    channel: str | None
    detail: dict[str, Any] | None


def _alarm(row: Any) -> Alarm:
    return Alarm(**{k: row[k] for k in Alarm.__slots__})


def _timeline(row: Any) -> TimelineEntry:
    detail = json.loads(row["detail"]) if row["detail"] else None
    return TimelineEntry(
        row["id"], row["alarm_id"], row["at"], row["entry"], row["state"],
        row["actor"], row["channel"], detail,
    )


class AlarmTx:
    """Alarm reads and writes inside the current write transaction."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.conn = db.conn

    def find_panel_event(self, panel_id: str, seq: int) -> StoredEvent | None:
        row = self.conn.execute(
            "SELECT * FROM panel_events WHERE panel_id = ? AND seq = ?", (panel_id, seq)
        ).fetchone()
        return StoredEvent(**{k: row[k] for k in StoredEvent.__slots__}) if row else None

    def insert_panel_event(self, event: StoredEvent) -> None:
        self.conn.execute(
            "INSERT INTO panel_events (panel_id, seq, type, payload, alarm_id, status, error,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event.panel_id, event.seq, event.type, event.payload, event.alarm_id,
             event.status, event.error, event.received_at),
        )

    def get_alarm(self, alarm_id: str) -> Alarm | None:
        row = self.conn.execute("SELECT * FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
        return _alarm(row) if row else None

    def insert_alarm(self, alarm: Alarm) -> None:
        cols = Alarm.__slots__
        self.conn.execute(
            f"INSERT INTO alarms ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            tuple(getattr(alarm, c) for c in cols),
        )

    def set_state(self, alarm_id: str, state: str, now: int) -> None:
        self.conn.execute(
            "UPDATE alarms SET state = ?, updated_at = ? WHERE id = ?", (state, now, alarm_id)
        )

    def append_timeline(
        self,
        alarm_id: str,
        at: int,
        entry: str,
        state: str,
        *,
        actor: str | None = None,
        channel: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int:
        """Add one entry to an alarm's timeline; returns its id."""
        cur = self.conn.execute(
            "INSERT INTO alarm_timeline (alarm_id, at, entry, state, actor, channel, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (alarm_id, at, entry, state, actor, channel,
             json.dumps(detail, sort_keys=True) if detail else None),
        )
        return int(cur.lastrowid or 0)

    def count_timeline(self, alarm_id: str, entry: str) -> int:
        return self.conn.execute(
            "SELECT count(*) FROM alarm_timeline WHERE alarm_id = ? AND entry = ?",
            (alarm_id, entry),
        ).fetchone()[0]


class AlarmStore:
    """Read-only views of alarms for the web, the demo and the tests."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, alarm_id: str) -> Alarm | None:
        def q(d: sqlite_utils.Database) -> Alarm | None:
            row = d.conn.execute("SELECT * FROM alarms WHERE id = ?", (alarm_id,)).fetchone()
            return _alarm(row) if row else None

        return await self.db.read(q)

    async def list_recent(self, limit: int = 100) -> list[Alarm]:
        def q(d: sqlite_utils.Database) -> list[Alarm]:
            rows = d.conn.execute(
                "SELECT * FROM alarms ORDER BY raised_at DESC, id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [_alarm(r) for r in rows]

        return await self.db.read(q)

    async def timeline(self, alarm_id: str) -> list[TimelineEntry]:
        def q(d: sqlite_utils.Database) -> list[TimelineEntry]:
            rows = d.conn.execute(
                "SELECT * FROM alarm_timeline WHERE alarm_id = ? ORDER BY id", (alarm_id,)
            ).fetchall()
            return [_timeline(r) for r in rows]

        return await self.db.read(q)

    async def count(self) -> int:
        return await self.db.read(
            lambda d: d.conn.execute("SELECT count(*) FROM alarms").fetchone()[0]
        )
