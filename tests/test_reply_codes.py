"""Reply codes: "Reply 3 to acknowledge" names one of a phone's open alarms, never two."""

from __future__ import annotations

import sqlite3

import pytest

from hub.alarms.alarm_store import Alarm, AlarmTx
from hub.alarms.contact_store import ContactTx
from hub.storage.db import Database, create_engine
from tests.legacy_schema import make_legacy_file

pytestmark = pytest.mark.asyncio

PATROL = "+15550000201"


def _alarm(n: int, alarm_id: str | None = None) -> Alarm:
    return Alarm(
        id=alarm_id or f"a-{n:04d}", unit_id="u-0001", household_id="h-01",
        panel_id="p-0001-01", kind="burglary", state="raised", raised_at=n, panel_ts=n, seq=n,
        updated_at=n,
    )  # fmt: skip


async def _code(db: Database, n: int) -> int:
    """The patrol's code for alarm n, raising the alarm first if it is new."""

    def write(conn):
        alarms = AlarmTx(conn)
        if alarms.get_alarm(f"a-{n:04d}") is None:
            alarms.insert_alarm(_alarm(n))
        return ContactTx(conn).reply_code(PATROL, f"a-{n:04d}", "patrol", "Patrol 1", n)

    return await db.write(write)


async def _close(db: Database, n: int, state: str = "resolved") -> None:
    await db.write(lambda conn: AlarmTx(conn).set_state(f"a-{n:04d}", state, n))


@pytest.fixture
async def db(db_target):
    db = Database(db_target)
    await db.open()
    yield db
    await db.close()


async def test_each_open_alarm_of_a_phone_has_its_own_code_and_the_lowest_free_is_reused(db):
    assert [await _code(db, n) for n in (1, 2, 3)] == [1, 2, 3]
    assert await _code(db, 2) == 2  # asked again: the same code, not a new one
    await _close(db, 2)
    assert await _code(db, 4) == 2  # the lowest code no open alarm uses
    assert await _code(db, 5) == 4
    await _close(db, 1, "cancelled")
    await _close(db, 3)
    assert await _code(db, 6) == 1
    assert await _code(db, 7) == 3
    assert await _code(db, 8) == 5
    # A storm: hundreds of open alarms on one patrol's phone, every code distinct.
    codes = [await _code(db, n) for n in range(9, 409)]
    assert sorted(codes) == list(range(6, 406))
    await _close(db, 200)
    assert await _code(db, 409) == await _code(db, 409) == codes[200 - 9]
    await _close(db, 10)  # and low down, among hundreds still open
    assert await _code(db, 410) == codes[10 - 9] == 7
    assert await _code(db, 411) == 406


def _steps_of_next_code(db_path, phone: str, alarm_id: str) -> tuple[int, int]:
    """(the code a new alarm gets, SQLite VM steps spent finding it), rolled back after."""
    engine = create_engine(db_path)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    with engine.connect() as conn, conn.begin() as tx:
        AlarmTx(conn).insert_alarm(_alarm(1, alarm_id))
        sqlite = conn.connection.driver_connection
        sqlite.set_progress_handler(count, 1)
        code = ContactTx(conn).reply_code(phone, alarm_id, "patrol", "P", 1)
        sqlite.set_progress_handler(None, 1)
        tx.rollback()
    engine.dispose()
    return code, steps


async def test_a_new_code_costs_the_same_after_months_of_closed_alarms(tmp_path):
    # A patrol phone hears of every alarm in its zone: in the field its codes pile up by
    # the thousand, while only a few of its alarms are open at any time. Counted in the
    # steps of SQLite's engine, which can count them; the embedded database is the one
    # whose writer every alarm waits for.
    db = Database(tmp_path / "hub.db")
    await db.open()
    try:
        await _code(db, 1)
        await _code(db, 2)
        code, fresh = _steps_of_next_code(db.path, PATROL, "a-new")
        assert code == 3

        def history(conn):
            alarms, contacts = AlarmTx(conn), ContactTx(conn)
            for n in range(3, 3003):
                alarms.insert_alarm(_alarm(n))
                contacts.reply_code(PATROL, f"a-{n:04d}", "patrol", "Patrol 1", n)
                alarms.set_state(f"a-{n:04d}", "resolved", n)

        await db.write(history)
        code, after = _steps_of_next_code(db.path, PATROL, "a-new")
        assert code == 3  # codes 1 and 2 are still in use, every other one is free
        # Reading 3,000 old codes would take tens of thousands of steps more.
        assert after < fresh + 200, (fresh, after)
    finally:
        await db.close()


async def test_a_database_from_before_keeps_its_open_codes_and_frees_the_closed_ones(tmp_path):
    # A file an older tenhub wrote, before the codes of closed alarms were freed.
    path = tmp_path / "hub.db"
    make_legacy_file(path, up_to=6)
    conn = sqlite3.connect(path, isolation_level=None)
    for n, state in ((1, "resolved"), (2, "raised"), (3, "cancelled"), (4, "acknowledged")):
        conn.execute(
            "INSERT INTO alarms (id, unit_id, household_id, panel_id, kind, state, raised_at,"
            " panel_ts, seq, updated_at) VALUES (?, 'u-0001', 'h-01', 'p-0001-01',"
            " 'burglary', ?, ?, ?, ?, ?)",
            (f"a-{n:04d}", state, n, n, n, n),
        )
        conn.execute(
            "INSERT INTO reply_codes (phone, alarm_id, code, role, name, created_at)"
            " VALUES (?, ?, ?, 'patrol', 'Patrol 1', ?)",
            (PATROL, f"a-{n:04d}", n, n),
        )
    conn.close()
    db = Database(path)
    await db.open()  # brought up to date
    try:
        # Codes 2 and 4 belong to open alarms; 1 and 3 are free again.
        assert [await _code(db, n) for n in (5, 6, 7)] == [1, 3, 5]
        await _close(db, 4)
        assert await _code(db, 8) == 4
    finally:
        await db.close()
