"""SQL for alarms, their timelines and the panel events that made them.

`AlarmTx` works inside one write transaction on the writer thread; `AlarmStore` gives
the async, read-only views the web and the tests use.
"""

from __future__ import annotations

import json
from collections.abc import Collection
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
    policy: str | None = None
    ladder: str | None = None  # JSON of the policy as it was when the alarm was raised
    next_step: int | None = None
    next_step_at: int | None = None
    duress: int = 0


@dataclass(frozen=True, slots=True)
class StepRecord:
    """What became of one step of an alarm's ladder."""

    alarm_id: str
    step: int
    outcome: str  # fired | skipped
    due_at: int
    at: int
    reason: str | None


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
        row["id"],
        row["alarm_id"],
        row["at"],
        row["entry"],
        row["state"],
        row["actor"],
        row["channel"],
        detail,
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
            (
                event.panel_id,
                event.seq,
                event.type,
                event.payload,
                event.alarm_id,
                event.status,
                event.error,
                event.received_at,
            ),
        )

    def supersede_panel_event(self, event: StoredEvent, now: int) -> None:
        """Move a stored event aside, freeing its (panel, seq) for the panel's new event."""
        self.conn.execute(
            "INSERT INTO panel_events_superseded (panel_id, seq, type, payload, alarm_id,"
            " status, error, received_at, superseded_at)"
            " SELECT panel_id, seq, type, payload, alarm_id, status, error, received_at, ?"
            " FROM panel_events WHERE panel_id = ? AND seq = ?",
            (now, event.panel_id, event.seq),
        )
        self.conn.execute(
            "DELETE FROM panel_events WHERE panel_id = ? AND seq = ?", (event.panel_id, event.seq)
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

    def open_alarm_of(self, unit_id: str, household_id: str, kind: str) -> Alarm | None:
        """The household's newest alarm of this kind that is not over, if any."""
        row = self.conn.execute(
            "SELECT * FROM alarms WHERE unit_id = ? AND household_id = ? AND kind = ?"
            " AND state NOT IN ('resolved', 'cancelled') ORDER BY raised_at DESC LIMIT 1",
            (unit_id, household_id, kind),
        ).fetchone()
        return _alarm(row) if row else None

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
            (
                alarm_id,
                at,
                entry,
                state,
                actor,
                channel,
                json.dumps(detail, sort_keys=True) if detail else None,
            ),
        )
        return int(cur.lastrowid or 0)

    def set_next_step(self, alarm_id: str, step: int | None, due_at: int | None) -> None:
        """Point the alarm at its next step (None, None: no step left)."""
        self.conn.execute(
            "UPDATE alarms SET next_step = ?, next_step_at = ? WHERE id = ?",
            (step, due_at, alarm_id),
        )

    def set_duress(self, alarm_id: str) -> None:
        self.conn.execute("UPDATE alarms SET duress = 1 WHERE id = ?", (alarm_id,))

    def due_alarms(self, now: int, limit: int) -> list[Alarm]:
        """Alarms whose next step is due at `now`, most overdue first."""
        rows = self.conn.execute(
            "SELECT * FROM alarms WHERE next_step_at IS NOT NULL AND next_step_at <= ?"
            " ORDER BY next_step_at, id LIMIT ?",
            (now, limit),
        ).fetchall()
        return [_alarm(r) for r in rows]

    def next_step_due_at(self) -> int | None:
        """When the earliest pending step of any alarm falls due; None when none is pending."""
        return self.conn.execute(
            "SELECT min(next_step_at) FROM alarms WHERE next_step_at IS NOT NULL"
        ).fetchone()[0]

    def record_step(self, record: StepRecord) -> None:
        """Record a step's outcome; raises IntegrityError if it was recorded before."""
        self.conn.execute(
            "INSERT INTO alarm_steps (alarm_id, step, outcome, due_at, at, reason)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (record.alarm_id, record.step, record.outcome, record.due_at, record.at, record.reason),
        )

    def ack_roles(self, alarm_id: str) -> set[str]:
        """Roles of everyone who acknowledged the alarm so far."""
        rows = self.conn.execute(
            "SELECT DISTINCT json_extract(detail, '$.role') FROM alarm_timeline"
            " WHERE alarm_id = ? AND entry = 'acknowledged'",
            (alarm_id,),
        )
        return {r[0] for r in rows if r[0]}

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

    async def search(
        self,
        *,
        states: Collection[str] | None = None,
        unit_ids: Collection[str] | None = None,
        kind: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 200,
    ) -> list[Alarm]:
        """Alarms matching every filter given, newest first."""
        where, params = ["1 = 1"], []
        for column, values in (("state", states), ("unit_id", unit_ids)):
            if values is not None:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                params += list(values)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        if since is not None:
            where.append("raised_at >= ?")
            params.append(since)
        if until is not None:
            where.append("raised_at < ?")
            params.append(until)
        sql = (
            f"SELECT * FROM alarms WHERE {' AND '.join(where)}"
            " ORDER BY raised_at DESC, id DESC LIMIT ?"
        )
        return await self.db.read(
            lambda d: [_alarm(r) for r in d.conn.execute(sql, (*params, limit)).fetchall()]
        )

    async def answers(self, alarm_ids: Collection[str]) -> dict[str, list[TimelineEntry]]:
        """The acknowledgements and arrivals of each alarm, oldest first."""
        marks = ", ".join("?" * len(alarm_ids))

        def q(d: sqlite_utils.Database) -> dict[str, list[TimelineEntry]]:
            found: dict[str, list[TimelineEntry]] = {a: [] for a in alarm_ids}
            rows = d.conn.execute(
                f"SELECT * FROM alarm_timeline WHERE alarm_id IN ({marks})"
                " AND entry IN ('acknowledged', 'on_scene') ORDER BY id",
                tuple(alarm_ids),
            )
            for r in rows:
                found[r["alarm_id"]].append(_timeline(r))
            return found

        return await self.db.read(q) if alarm_ids else {}

    async def notified_counts(self, alarm_ids: Collection[str]) -> dict[str, int]:
        """How many people-facing notifications (not panel alerts) each alarm has."""
        marks = ", ".join("?" * len(alarm_ids))

        def q(d: sqlite_utils.Database) -> dict[str, int]:
            rows = d.conn.execute(
                f"SELECT alarm_id, count(*) FROM outbox WHERE alarm_id IN ({marks})"
                " AND channel != 'panel' GROUP BY alarm_id",
                tuple(alarm_ids),
            )
            return {r[0]: r[1] for r in rows}

        return await self.db.read(q) if alarm_ids else {}

    async def steps(self, alarm_id: str) -> list[StepRecord]:
        def q(d: sqlite_utils.Database) -> list[StepRecord]:
            rows = d.conn.execute(
                "SELECT * FROM alarm_steps WHERE alarm_id = ? ORDER BY step", (alarm_id,)
            ).fetchall()
            return [StepRecord(**{k: r[k] for k in StepRecord.__slots__}) for r in rows]

        return await self.db.read(q)

    async def count(self) -> int:
        return await self.db.read(
            lambda d: d.conn.execute("SELECT count(*) FROM alarms").fetchone()[0]
        )
