"""SQL for alarms, their timelines and the panel events that made them.

`AlarmTx` works inside one write transaction on the writer thread; `AlarmStore` gives
the async, read-only views the web and the tests use.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import column, select, table, text

from hub.storage.db import Conn, Database
from hub.storage.sql_text import query


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


_ALARM_COLUMNS = ", ".join(Alarm.__slots__)
_EVENT_COLUMNS = ", ".join(StoredEvent.__slots__)
_TIMELINE_COLUMNS = ("id", "alarm_id", "at", "entry", "state", "actor", "channel", "detail")
_ALARM_BY_ID = query(f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE id = :alarm_id", *Alarm.__slots__)
_FIND_EVENT = query(
    f"SELECT {_EVENT_COLUMNS} FROM panel_events WHERE panel_id = :panel_id AND seq = :seq",
    *StoredEvent.__slots__,
)
_INSERT_EVENT = text(
    f"INSERT INTO panel_events ({_EVENT_COLUMNS})"
    f" VALUES ({', '.join(':' + c for c in StoredEvent.__slots__)})"
)
_SUPERSEDE_EVENT = text(
    f"INSERT INTO panel_events_superseded ({_EVENT_COLUMNS}, superseded_at)"
    f" SELECT {_EVENT_COLUMNS}, :now FROM panel_events WHERE panel_id = :panel_id AND seq = :seq"
)
_DELETE_EVENT = text("DELETE FROM panel_events WHERE panel_id = :panel_id AND seq = :seq")
_INSERT_ALARM = text(
    f"INSERT INTO alarms ({_ALARM_COLUMNS}) VALUES ({', '.join(':' + c for c in Alarm.__slots__)})"
)
_OPEN_ALARM_OF = query(
    f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE unit_id = :unit_id"
    " AND household_id = :household_id AND kind = :kind"
    " AND state NOT IN ('resolved', 'cancelled') ORDER BY raised_at DESC LIMIT 1",
    *Alarm.__slots__,
)
_SET_STATE = text("UPDATE alarms SET state = :state, updated_at = :now WHERE id = :alarm_id")
_APPEND_TIMELINE = query(
    "INSERT INTO alarm_timeline (alarm_id, at, entry, state, actor, channel, detail)"
    " VALUES (:alarm_id, :at, :entry, :state, :actor, :channel, :detail) RETURNING id",
    "id",
)
_SET_NEXT_STEP = text(
    "UPDATE alarms SET next_step = :step, next_step_at = :due_at WHERE id = :alarm_id"
)
_SET_DURESS = text("UPDATE alarms SET duress = 1 WHERE id = :alarm_id")
_DUE_ALARMS = query(
    f"SELECT {_ALARM_COLUMNS} FROM alarms WHERE next_step_at IS NOT NULL"
    " AND next_step_at <= :now ORDER BY next_step_at, id LIMIT :limit",
    *Alarm.__slots__,
)
_NEXT_STEP_DUE_AT = query(
    "SELECT min(next_step_at) AS due_at FROM alarms WHERE next_step_at IS NOT NULL", "due_at"
)
_RECORD_STEP = text(
    "INSERT INTO alarm_steps (alarm_id, step, outcome, due_at, at, reason)"
    " VALUES (:alarm_id, :step, :outcome, :due_at, :at, :reason)"
)
_ACK_DETAILS = query(
    "SELECT detail FROM alarm_timeline WHERE alarm_id = :alarm_id AND entry = 'acknowledged'",
    "detail",
)
_COUNT_TIMELINE = query(
    "SELECT count(*) AS n FROM alarm_timeline WHERE alarm_id = :alarm_id AND entry = :entry", "n"
)
_ANSWERS = query(
    f"SELECT {', '.join(_TIMELINE_COLUMNS)} FROM alarm_timeline WHERE alarm_id IN :alarm_ids"
    " AND entry IN ('acknowledged', 'on_scene') ORDER BY id",
    *_TIMELINE_COLUMNS,
    lists=["alarm_ids"],
)
_TIMELINE = query(
    f"SELECT {', '.join(_TIMELINE_COLUMNS)} FROM alarm_timeline WHERE alarm_id = :alarm_id"
    " ORDER BY id",
    *_TIMELINE_COLUMNS,
)
_STEPS = query(
    f"SELECT {', '.join(StepRecord.__slots__)} FROM alarm_steps WHERE alarm_id = :alarm_id"
    " ORDER BY step",
    *StepRecord.__slots__,
)
_COUNT = query("SELECT count(*) AS n FROM alarms", "n")
_ALARMS = table("alarms", *(column(c) for c in Alarm.__slots__))
_NOTIFIED_COUNTS = query(
    "SELECT alarm_id, count(*) AS n FROM outbox WHERE alarm_id IN :alarm_ids"
    " AND channel != 'panel' GROUP BY alarm_id",
    "alarm_id",
    "n",
    lists=["alarm_ids"],
)


class AlarmTx:
    """Alarm reads and writes inside the current write transaction."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def find_panel_event(self, panel_id: str, seq: int) -> StoredEvent | None:
        row = self.conn.execute(_FIND_EVENT, {"panel_id": panel_id, "seq": seq}).mappings().first()
        return StoredEvent(**{k: row[k] for k in StoredEvent.__slots__}) if row else None

    def insert_panel_event(self, event: StoredEvent) -> None:
        self.conn.execute(_INSERT_EVENT, {k: getattr(event, k) for k in StoredEvent.__slots__})

    def supersede_panel_event(self, event: StoredEvent, now: int) -> None:
        """Move a stored event aside, freeing its (panel, seq) for the panel's new event."""
        key = {"panel_id": event.panel_id, "seq": event.seq}
        self.conn.execute(_SUPERSEDE_EVENT, {**key, "now": now})
        self.conn.execute(_DELETE_EVENT, key)

    def get_alarm(self, alarm_id: str) -> Alarm | None:
        row = self.conn.execute(_ALARM_BY_ID, {"alarm_id": alarm_id}).mappings().first()
        return _alarm(row) if row else None

    def insert_alarm(self, alarm: Alarm) -> None:
        self.conn.execute(_INSERT_ALARM, {k: getattr(alarm, k) for k in Alarm.__slots__})

    def open_alarm_of(self, unit_id: str, household_id: str, kind: str) -> Alarm | None:
        """The household's newest alarm of this kind that is not over, if any."""
        row = (
            self.conn.execute(
                _OPEN_ALARM_OF, {"unit_id": unit_id, "household_id": household_id, "kind": kind}
            )
            .mappings()
            .first()
        )
        return _alarm(row) if row else None

    def set_state(self, alarm_id: str, state: str, now: int) -> None:
        self.conn.execute(_SET_STATE, {"state": state, "now": now, "alarm_id": alarm_id})

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
        return self.conn.execute(
            _APPEND_TIMELINE,
            {
                "alarm_id": alarm_id,
                "at": at,
                "entry": entry,
                "state": state,
                "actor": actor,
                "channel": channel,
                "detail": json.dumps(detail, sort_keys=True) if detail else None,
            },
        ).scalar_one()

    def set_next_step(self, alarm_id: str, step: int | None, due_at: int | None) -> None:
        """Point the alarm at its next step (None, None: no step left)."""
        self.conn.execute(_SET_NEXT_STEP, {"step": step, "due_at": due_at, "alarm_id": alarm_id})

    def set_duress(self, alarm_id: str) -> None:
        self.conn.execute(_SET_DURESS, {"alarm_id": alarm_id})

    def due_alarms(self, now: int, limit: int) -> list[Alarm]:
        """Alarms whose next step is due at `now`, most overdue first."""
        rows = self.conn.execute(_DUE_ALARMS, {"now": now, "limit": limit}).mappings()
        return [_alarm(r) for r in rows]

    def next_step_due_at(self) -> int | None:
        """When the earliest pending step of any alarm falls due; None when none is pending."""
        return self.conn.execute(_NEXT_STEP_DUE_AT).scalar()

    def record_step(self, record: StepRecord) -> None:
        """Record a step's outcome; raises IntegrityError if it was recorded before."""
        self.conn.execute(_RECORD_STEP, {k: getattr(record, k) for k in StepRecord.__slots__})

    def ack_roles(self, alarm_id: str) -> set[str]:
        """Roles of everyone who acknowledged the alarm so far."""
        # The detail is JSON text, read here rather than by the database: one query for
        # SQLite and PostgreSQL alike, and an alarm has a handful of acknowledgements.
        details = self.conn.execute(_ACK_DETAILS, {"alarm_id": alarm_id}).scalars()
        roles = (json.loads(d).get("role") for d in details if d)
        return {r for r in roles if r}

    def count_timeline(self, alarm_id: str, entry: str) -> int:
        return self.conn.execute(
            _COUNT_TIMELINE, {"alarm_id": alarm_id, "entry": entry}
        ).scalar_one()


class AlarmStore:
    """Read-only views of alarms for the web, the demo and the tests."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, alarm_id: str) -> Alarm | None:
        return await self.db.read(lambda conn: AlarmTx(conn).get_alarm(alarm_id))

    async def list_recent(self, limit: int = 100) -> list[Alarm]:
        return await self.search(limit=limit)

    async def timeline(self, alarm_id: str) -> list[TimelineEntry]:
        def q(conn: Conn) -> list[TimelineEntry]:
            rows = conn.execute(_TIMELINE, {"alarm_id": alarm_id}).mappings()
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
        statement = select(_ALARMS).order_by(_ALARMS.c.raised_at.desc(), _ALARMS.c.id.desc())
        if states is not None:
            statement = statement.where(_ALARMS.c.state.in_(list(states)))
        if unit_ids is not None:
            statement = statement.where(_ALARMS.c.unit_id.in_(list(unit_ids)))
        if kind is not None:
            statement = statement.where(_ALARMS.c.kind == kind)
        if since is not None:
            statement = statement.where(_ALARMS.c.raised_at >= since)
        if until is not None:
            statement = statement.where(_ALARMS.c.raised_at < until)
        statement = statement.limit(limit)
        return await self.db.read(
            lambda conn: [_alarm(r) for r in conn.execute(statement).mappings()]
        )

    async def answers(self, alarm_ids: Collection[str]) -> dict[str, list[TimelineEntry]]:
        """The acknowledgements and arrivals of each alarm, oldest first."""

        def q(conn: Conn) -> dict[str, list[TimelineEntry]]:
            found: dict[str, list[TimelineEntry]] = {a: [] for a in alarm_ids}
            for r in conn.execute(_ANSWERS, {"alarm_ids": list(alarm_ids)}).mappings():
                found[r["alarm_id"]].append(_timeline(r))
            return found

        return await self.db.read(q) if alarm_ids else {}

    async def notified_counts(self, alarm_ids: Collection[str]) -> dict[str, int]:
        """How many people-facing notifications (not panel alerts) each alarm has."""

        def q(conn: Conn) -> dict[str, int]:
            rows = conn.execute(_NOTIFIED_COUNTS, {"alarm_ids": list(alarm_ids)})
            return {r[0]: r[1] for r in rows}

        return await self.db.read(q) if alarm_ids else {}

    async def steps(self, alarm_id: str) -> list[StepRecord]:
        def q(conn: Conn) -> list[StepRecord]:
            rows = conn.execute(_STEPS, {"alarm_id": alarm_id}).mappings()
            return [StepRecord(**{k: r[k] for k in StepRecord.__slots__}) for r in rows]

        return await self.db.read(q)

    async def count(self) -> int:
        return await self.db.read(lambda conn: conn.execute(_COUNT).scalar_one())
