"""SQL for panels: their last known state, and the troubles the desk reads and closes."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import text

from hub.alarms.trouble_store import Trouble, TroubleStore
from hub.panels.presence import PanelPresence, PresenceRow
from hub.storage.db import Database
from hub.storage.sql_text import query

_SAVE_PRESENCE = text(
    "INSERT INTO panel_state (panel_id, state, last_seen, battery, fw, updated_at)"
    " VALUES (:panel_id, :state, :last_seen, :battery, :fw, :now) ON CONFLICT (panel_id)"
    " DO UPDATE SET state = excluded.state, last_seen = excluded.last_seen,"
    " battery = excluded.battery, fw = excluded.fw, updated_at = excluded.updated_at"
)
_PRESENCE = ("panel_id", "state", "last_seen", "battery", "fw")
_LOAD_PRESENCE = query(f"SELECT {', '.join(_PRESENCE)} FROM panel_state", *_PRESENCE)


class PanelStore:
    """Panels' state and troubles, for the supervision job and the web."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.trouble_store = TroubleStore(db)

    async def save_presence(self, rows: list[PresenceRow], now: int) -> None:
        """Write these panels' rows in one transaction (the caller keeps it short: an
        alarm's write waits behind it)."""
        values = [
            {
                "panel_id": pid,
                "state": state,
                "last_seen": last_seen or None,
                "battery": battery,
                "fw": fw,
                "now": now,
            }
            for pid, state, last_seen, battery, fw in rows
        ]
        if values:
            await self.db.write(lambda conn: conn.execute(_SAVE_PRESENCE, values))

    async def load_presence(self) -> list[tuple[str, PanelPresence]]:
        rows = await self.db.read(lambda conn: conn.execute(_LOAD_PRESENCE).all())
        return [(r[0], PanelPresence(r[1], r[2] or 0, r[3], r[4])) for r in rows]

    async def troubles(
        self,
        *,
        panel_ids: Collection[str] | None = None,
        open_only: bool = True,
        limit: int = 500,
    ) -> list[Trouble]:
        """Troubles newest first: open ones only unless `open_only` is False."""
        return await self.trouble_store.troubles(
            panel_ids=panel_ids, open_only=open_only, limit=limit
        )

    async def get_trouble(self, trouble_id: int) -> Trouble | None:
        return await self.trouble_store.get_trouble(trouble_id)

    async def close_trouble(self, trouble_id: int, now: int) -> bool:
        """Close it; False when it was closed already or never was."""
        return await self.trouble_store.close_trouble(trouble_id, now)
