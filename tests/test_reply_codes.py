"""Reply codes: "Reply 3 to acknowledge" names one of a phone's open alarms, never two."""

from __future__ import annotations

import pytest

from hub.alarm_store import Alarm, AlarmTx
from hub.contact_store import ContactTx
from hub.db import Database

pytestmark = pytest.mark.asyncio

PATROL = "+15550000201"


def _alarm(n: int) -> Alarm:
    return Alarm(
        id=f"a-{n:04d}", unit_id="u-0001", household_id="h-01", panel_id="p-0001-01",
        kind="burglary", state="raised", raised_at=n, panel_ts=n, seq=n, updated_at=n,
    )  # fmt: skip


async def _code(db: Database, n: int) -> int:
    """The patrol's code for alarm n, raising the alarm first if it is new."""

    def write(d):
        alarms = AlarmTx(d)
        if alarms.get_alarm(f"a-{n:04d}") is None:
            alarms.insert_alarm(_alarm(n))
        return ContactTx(d).reply_code(PATROL, f"a-{n:04d}", "patrol", "Patrol 1", n)

    return await db.write(write)


async def _close(db: Database, n: int, state: str = "resolved") -> None:
    await db.write(lambda d: AlarmTx(d).set_state(f"a-{n:04d}", state, n))


async def test_each_open_alarm_of_a_phone_has_its_own_code_and_the_lowest_free_is_reused(
    tmp_path,
):
    db = Database(tmp_path / "hub.db")
    await db.open()
    try:
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
    finally:
        await db.close()
