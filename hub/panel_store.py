"""SQL for panels' supervision: their last known state, and troubles opened and closed."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from hub.db import Database
from hub.presence import PanelPresence, PresenceRow


@dataclass(frozen=True, slots=True)
class Trouble:
    id: int
    panel_id: str
    kind: str
    opened_at: int
    closed_at: int | None
    detail: dict[str, Any] | None


def _trouble(row: Any) -> Trouble:
    return Trouble(
        row["id"],
        row["panel_id"],
        row["kind"],
        row["opened_at"],
        row["closed_at"],
        json.loads(row["detail"]) if row["detail"] else None,
    )


class TroubleTx:
    """Troubles inside the current write transaction."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.conn = db.conn

    def open(self, panel_id: str, kind: str, now: int, detail: dict | None = None) -> int | None:
        """Open a trouble; its id, or None when one of this kind is open already."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO troubles (panel_id, kind, opened_at, detail)"
            " VALUES (?, ?, ?, ?)",
            (panel_id, kind, now, json.dumps(detail) if detail else None),
        )
        return int(cur.lastrowid) if cur.rowcount == 1 and cur.lastrowid else None

    def close(self, panel_id: str, kind: str, now: int) -> bool:
        """Close the open trouble of this kind; False when there was none."""
        cur = self.conn.execute(
            "UPDATE troubles SET closed_at = ? WHERE panel_id = ? AND kind = ?"
            " AND closed_at IS NULL",
            (now, panel_id, kind),
        )
        return cur.rowcount == 1

    def offline_panels(self, panel_ids: Collection[str]) -> list[str]:
        """Which of these panels were last known offline (or never heard)."""
        marks = ", ".join("?" * len(panel_ids))
        known = {
            r[0]: r[1]
            for r in self.conn.execute(
                f"SELECT panel_id, state FROM panel_state WHERE panel_id IN ({marks})",
                tuple(panel_ids),
            )
        }
        return [p for p in panel_ids if known.get(p) != "online"]


class PanelStore:
    """Panels' state and troubles, for the supervision job and the web."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def save_presence(self, rows: list[PresenceRow], now: int) -> None:
        """Write these panels' rows in one transaction (the caller keeps it short: an
        alarm's write waits behind it)."""
        values = [
            (pid, state, last_seen or None, battery, fw, now)
            for pid, state, last_seen, battery, fw in rows
        ]
        await self.db.write(
            lambda d: d.conn.executemany(
                "INSERT INTO panel_state (panel_id, state, last_seen, battery, fw, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (panel_id) DO UPDATE SET"
                " state = excluded.state, last_seen = excluded.last_seen,"
                " battery = excluded.battery, fw = excluded.fw,"
                " updated_at = excluded.updated_at",
                values,
            )
        )

    async def load_presence(self) -> list[tuple[str, PanelPresence]]:
        rows = await self.db.read(
            lambda d: d.conn.execute(
                "SELECT panel_id, state, last_seen, battery, fw FROM panel_state"
            ).fetchall()
        )
        return [(r[0], PanelPresence(r[1], r[2] or 0, r[3], r[4])) for r in rows]

    async def troubles(
        self,
        *,
        panel_ids: Collection[str] | None = None,
        open_only: bool = True,
        limit: int = 500,
    ) -> list[Trouble]:
        where, params = ["1 = 1"], []
        if open_only:
            where.append("closed_at IS NULL")
        if panel_ids is not None:
            where.append(f"panel_id IN ({', '.join('?' * len(panel_ids))})")
            params += list(panel_ids)
        sql = f"SELECT * FROM troubles WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?"
        return await self.db.read(
            lambda d: [_trouble(r) for r in d.conn.execute(sql, (*params, limit)).fetchall()]
        )

    async def get_trouble(self, trouble_id: int) -> Trouble | None:
        row = await self.db.read(
            lambda d: d.conn.execute(
                "SELECT * FROM troubles WHERE id = ?", (trouble_id,)
            ).fetchone()
        )
        return _trouble(row) if row else None

    async def close_trouble(self, trouble_id: int, now: int) -> bool:
        return await self.db.write(
            lambda d: (
                d.conn.execute(
                    "UPDATE troubles SET closed_at = ? WHERE id = ? AND closed_at IS NULL",
                    (now, trouble_id),
                ).rowcount
                == 1
            )
        )
