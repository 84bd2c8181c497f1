"""SQL for the SIA DC-09 messages a receiver took: which tenhub seqs their events hold."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from hub.storage.db import Conn
from hub.storage.sql_text import query


@dataclass(frozen=True, slots=True)
class Dc09Record:
    """A DC-09 message as first taken: the tenhub seqs `seq`… of its `events`, their `ts`."""

    account: str
    dc09_seq: int
    token: str
    data: str
    panel_id: str
    seq: int
    events: int
    panel_ts: int
    received_at: int


_COLUMNS = (
    "account", "dc09_seq", "token", "data", "panel_id", "seq", "events", "panel_ts",
    "received_at",
)  # fmt: skip
_FIND = query(
    f"SELECT {', '.join(_COLUMNS)} FROM dc09_messages"
    " WHERE account = :account AND dc09_seq = :dc09_seq AND received_at >= :since"
    " AND token = :token AND data = :data ORDER BY received_at DESC LIMIT 1",
    *_COLUMNS,
)
_INSERT = text(
    f"INSERT INTO dc09_messages ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join(':' + c for c in _COLUMNS)})"
)
# The panel's events are stored under (panel, seq): the next seq is past every one of them,
# whoever stored it (a native panel that had this id before, say).
_LAST_SEQ = query("SELECT MAX(seq) AS seq FROM panel_events WHERE panel_id = :panel_id", "seq")


class Dc09Tx:
    """DC-09 messages inside the current write transaction."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def find(
        self, account: str, dc09_seq: int, token: str, data: str, since: int
    ) -> Dc09Record | None:
        """The message taken since `since` with this account, DC-09 seq, token and data."""
        row = (
            self.conn.execute(
                _FIND,
                {
                    "account": account,
                    "dc09_seq": dc09_seq,
                    "token": token,
                    "data": data,
                    "since": since,
                },
            )
            .mappings()
            .first()
        )
        return Dc09Record(**{c: row[c] for c in _COLUMNS}) if row else None

    def next_seq(self, panel_id: str) -> int:
        """The tenhub seq the panel's next event takes: past every event stored for it."""
        last = self.conn.execute(_LAST_SEQ, {"panel_id": panel_id}).scalar()
        return (last or 0) + 1

    def insert(self, record: Dc09Record) -> None:
        """Keep a message taken now."""
        self.conn.execute(_INSERT, {c: getattr(record, c) for c in _COLUMNS})
