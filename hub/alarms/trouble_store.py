"""SQL for panel troubles (offline, low battery, tamper, …): opened and closed by the
alarm rules and supervision inside their unit of work, read by the desk."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import column, select, table, text

from hub.storage.db import Conn, Database
from hub.storage.sql_text import query


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


# At most one open trouble of a kind per panel (a partial unique index): a flapping
# panel is one trouble.
_OPEN_TROUBLE = query(
    "INSERT INTO troubles (panel_id, kind, opened_at, detail)"
    " VALUES (:panel_id, :kind, :now, :detail)"
    " ON CONFLICT (panel_id, kind) WHERE closed_at IS NULL DO NOTHING RETURNING id",
    "id",
)
_CLOSE_TROUBLE = text(
    "UPDATE troubles SET closed_at = :now"
    " WHERE panel_id = :panel_id AND kind = :kind AND closed_at IS NULL"
)
_STATES_OF = query(
    "SELECT panel_id, state FROM panel_state WHERE panel_id IN :panel_ids",
    "panel_id",
    "state",
    lists=["panel_ids"],
)
_TROUBLE = ("id", "panel_id", "kind", "opened_at", "closed_at", "detail")
_TROUBLES = table("troubles", *(column(c) for c in _TROUBLE))
_TROUBLE_BY_ID = query(f"SELECT {', '.join(_TROUBLE)} FROM troubles WHERE id = :id", *_TROUBLE)
_CLOSE_TROUBLE_BY_ID = text(
    "UPDATE troubles SET closed_at = :now WHERE id = :id AND closed_at IS NULL"
)


class TroubleTx:
    """Troubles inside the current write transaction."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def open(self, panel_id: str, kind: str, now: int, detail: dict | None = None) -> int | None:
        """Open a trouble; its id, or None when one of this kind is open already."""
        return self.conn.execute(
            _OPEN_TROUBLE,
            {
                "panel_id": panel_id,
                "kind": kind,
                "now": now,
                "detail": json.dumps(detail) if detail else None,
            },
        ).scalar()

    def close(self, panel_id: str, kind: str, now: int) -> bool:
        """Close the open trouble of this kind; False when there was none."""
        params = {"now": now, "panel_id": panel_id, "kind": kind}
        return self.conn.execute(_CLOSE_TROUBLE, params).rowcount == 1

    def offline_panels(self, panel_ids: Collection[str]) -> list[str]:
        """Which of these panels were last known offline (or never heard)."""
        if not panel_ids:
            return []
        rows = self.conn.execute(_STATES_OF, {"panel_ids": list(panel_ids)})
        known = {r[0]: r[1] for r in rows}
        return [p for p in panel_ids if known.get(p) != "online"]


class TroubleStore:
    """Troubles read and closed outside a unit of work: the desk's list and its close button."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def troubles(
        self,
        *,
        panel_ids: Collection[str] | None = None,
        open_only: bool = True,
        limit: int = 500,
    ) -> list[Trouble]:
        statement = select(_TROUBLES).order_by(_TROUBLES.c.id.desc()).limit(limit)
        if open_only:
            statement = statement.where(_TROUBLES.c.closed_at.is_(None))
        if panel_ids is not None:
            statement = statement.where(_TROUBLES.c.panel_id.in_(list(panel_ids)))
        return await self.db.read(
            lambda conn: [_trouble(r) for r in conn.execute(statement).mappings()]
        )

    async def get_trouble(self, trouble_id: int) -> Trouble | None:
        row = await self.db.read(
            lambda conn: conn.execute(_TROUBLE_BY_ID, {"id": trouble_id}).mappings().first()
        )
        return _trouble(row) if row else None

    async def close_trouble(self, trouble_id: int, now: int) -> bool:
        return await self.db.write(
            lambda conn: (
                conn.execute(_CLOSE_TROUBLE_BY_ID, {"now": now, "id": trouble_id}).rowcount == 1
            )
        )
