"""The database has one writer: writes are atomic one by one, even when committed together.

Each story runs on SQLite and on PostgreSQL, except those about SQLite's own file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading

import pytest
import sqlalchemy as sa

from hub.storage.db import IDLE_CHECKPOINT_COMMITS, Database, create_engine
from hub.storage.migrations import SchemaTooNew, head
from tests.legacy_schema import make_legacy_file
from tests.waiting import until, within

pytestmark = pytest.mark.asyncio


def insert_into_t(v):
    return lambda c: c.execute(sa.text("INSERT INTO t (v) VALUES (:v)"), {"v": v}).rowcount


def values_of_t(order_by: str = "v"):
    return lambda c: c.execute(sa.text(f"SELECT v FROM t ORDER BY {order_by}")).scalars().all()


async def test_a_new_database_gets_the_newest_schema_and_keeps_it_on_reopen(empty_db_target):
    db = Database(empty_db_target)
    await db.open()
    assert db.schema_version == head() == 13
    await db.close()
    again = Database(empty_db_target)
    await again.open()
    assert again.schema_version == head()
    tables = await again.read(lambda c: set(sa.inspect(c).get_table_names()))
    assert {"alarms", "alarm_timeline", "panel_events", "outbox"} <= tables
    await again.close()


async def test_a_database_from_a_newer_tenhub_is_refused(db_target):
    engine = create_engine(db_target)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0999'"))
    engine.dispose()
    with pytest.raises(SchemaTooNew, match="newer"):
        await Database(db_target).open()


async def test_a_sqlite_file_from_a_newer_tenhub_before_revisions_is_refused(tmp_path):
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer"):
        await Database(path).open()


async def test_a_file_the_old_tenhub_wrote_is_upgraded_in_place_with_its_data(tmp_path):
    # A district's file from the last tenhub before revisions, at migration 6: an alarm
    # over and one open, reply codes for both, a cancel that still holds its PIN.
    path = tmp_path / "tenhub.db"
    make_legacy_file(path, up_to=6)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(
        """
        INSERT INTO alarms (id, unit_id, household_id, panel_id, kind, state, raised_at,
            panel_ts, seq, updated_at) VALUES
            ('a-old', 'u-1', 'h-1', 'p-1', 'fire', 'resolved', 1000, 1000, 1, 2000),
            ('a-open', 'u-1', 'h-2', 'p-2', 'panic', 'raised', 3000, 3000, 1, 3000);
        INSERT INTO alarm_timeline (alarm_id, at, entry, state)
            VALUES ('a-old', 1000, 'raised', 'raised'), ('a-old', 2000, 'resolved', 'resolved');
        INSERT INTO reply_codes (phone, alarm_id, code, role, name, created_at)
            VALUES ('+1555', 'a-old', 1, 'patrol', 'P', 1000),
                   ('+1555', 'a-open', 2, 'patrol', 'P', 3000);
        INSERT INTO panel_events (panel_id, seq, type, payload, alarm_id, status, received_at)
            VALUES ('p-2', 2, 'cancel', '{"alarm_id":"a-open","pin":"1234","seq":2}',
                    'a-open', 'accepted', 3500);
        """
    )
    conn.close()

    db = Database(path)
    await db.open()
    assert db.schema_version == head()

    def story(c):
        return {
            "timeline": c.execute(sa.text("SELECT entry FROM alarm_timeline ORDER BY id"))
            .scalars()
            .all(),
            # Revision 0007 marked the codes of the alarm that was over as free again.
            "open codes": c.execute(
                sa.text("SELECT alarm_id FROM reply_codes WHERE alarm_open = 1")
            )
            .scalars()
            .all(),
            # Revision 0012 took the PIN out of the stored cancel.
            "cancel": json.loads(
                c.execute(sa.text("SELECT payload FROM panel_events")).scalar_one()
            ),
        }

    assert await db.read(story) == {
        "timeline": ["raised", "resolved"],
        "open codes": ["a-open"],
        "cancel": {"alarm_id": "a-open", "pin": "removed", "seq": 2},
    }
    # The new tenhub writes to it, ids going on from the old ones.
    new_id = await db.write(
        lambda c: c.execute(
            sa.text(
                "INSERT INTO alarm_timeline (alarm_id, at, entry, state)"
                " VALUES ('a-open', 4000, 'acknowledged', 'acknowledged') RETURNING id"
            )
        ).scalar_one()
    )
    assert new_id == 3
    await db.close()
    # A tenhub from before revisions now refuses the file instead of writing to it.
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == head()
    conn.close()


async def test_an_upgraded_old_file_has_the_schema_of_a_new_one(tmp_path):
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    make_legacy_file(old)
    for path in (old, new):
        db = Database(path)
        await db.open()
        await db.close()

    def shape(path):
        """Tables' columns, and every index and trigger as SQL, spaced alike."""
        conn = sqlite3.connect(path)
        try:
            objects = conn.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master"
                " WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
            return {
                name: (
                    # Types aside (times are BIGINT now, the same integers to SQLite); a
                    # primary key is NOT NULL now, as SQLite's own never said of itself.
                    [
                        (column, bool(notnull or pk), str(default).strip("'"), pk)
                        for _, column, _type, notnull, default, pk in conn.execute(
                            f"PRAGMA table_info({name})"
                        )
                    ]
                    if kind == "table"
                    else (table, " ".join((sql or "").split()))
                )
                for kind, name, table, sql in objects
            }
        finally:
            conn.close()

    assert shape(old) == shape(new)


async def test_writes_committed_together_fail_alone(db_target):
    db = Database(db_target)
    await db.open()
    await db.write(lambda c: c.execute(sa.text("CREATE TABLE t (v INTEGER UNIQUE)")))

    # 1 and 3 twice: the second of each must fail without undoing the others.
    results = await asyncio.gather(
        *(db.write(insert_into_t(v)) for v in [1, 2, 1, 3, 3, 4]), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 2 and all(isinstance(f, sa.exc.IntegrityError) for f in failures)
    assert await db.read(values_of_t()) == [1, 2, 3, 4]
    await db.close()


async def test_the_timeline_cannot_be_rewritten(db_target):
    db = Database(db_target)
    await db.open()
    await db.write(
        lambda c: c.execute(
            sa.text(
                "INSERT INTO alarms (id, unit_id, household_id, panel_id, kind, state,"
                " raised_at, panel_ts, seq, updated_at) VALUES ('a-1', 'u-1', 'h-1', 'p-1',"
                " 'fire', 'raised', 1, 1, 1, 1)"
            )
        )
    )
    await db.write(
        lambda c: c.execute(
            sa.text(
                "INSERT INTO alarm_timeline (alarm_id, at, entry, state)"
                " VALUES ('a-1', 1, 'raised', 'raised')"
            )
        )
    )
    for sql in ("UPDATE alarm_timeline SET entry = 'x'", "DELETE FROM alarm_timeline"):
        with pytest.raises(sa.exc.IntegrityError, match="append-only"):
            await db.write(lambda c, sql=sql: c.execute(sa.text(sql)))
    await db.close()


async def test_reads_do_not_write(db_target):
    db = Database(db_target)
    await db.open()
    with pytest.raises(sa.exc.DBAPIError, match=r"(?i)read-?only"):
        await db.read(lambda c: c.execute(sa.text("CREATE TABLE nope (x INTEGER)")))
    await db.close()


async def test_an_alarm_write_goes_ahead_of_the_writes_queued_before_it(db_target):
    db = Database(db_target)
    await db.open()
    await db.write(lambda c: c.execute(sa.text("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)")))
    started, release = threading.Event(), threading.Event()
    order = iter(range(1, 100))

    def insert(v):
        # The order of the writes themselves, not of a key the database hands out.
        return lambda c: c.execute(
            sa.text("INSERT INTO t (n, v) VALUES (:n, :v)"), {"n": next(order), "v": v}
        )

    def slow(c):
        started.set()
        release.wait(30)  # the writer is busy with a long write
        insert("first")(c)

    first = asyncio.ensure_future(db.write(slow))
    assert await asyncio.to_thread(started.wait, 20), "the long write never started"
    others = [asyncio.ensure_future(db.write(insert(f"other {i}"))) for i in range(5)]
    alarm = asyncio.ensure_future(db.write(insert("alarm"), urgent=True))
    # All six queued behind the long write (the writer takes none while it is busy).
    await until(lambda: db.queued() == 6, timeout=20, message="six writes queued")
    release.set()
    await asyncio.gather(first, alarm, *others)
    # The alarm is committed right after the write in progress, before those queued earlier.
    assert await db.read(values_of_t("n")) == ["first", "alarm", *(f"other {i}" for i in range(5))]
    await db.close()


async def test_records_nobody_waits_on_share_the_next_commit(db_target):
    db = Database(db_target, lazy_window_s=0.2)
    await db.open()
    await db.write(lambda c: c.execute(sa.text("CREATE TABLE t (v TEXT)")))

    # Five sends' outcomes recorded, then an SMS claimed: one commit (one fsync) for all.
    before = db.commits
    records = [
        asyncio.ensure_future(db.write(insert_into_t(f"sent {i}"), lazy=True)) for i in range(5)
    ]
    await asyncio.sleep(0)  # queued first
    await db.write(insert_into_t("claim"))
    await asyncio.gather(*records)
    assert db.commits == before + 1

    # With nothing to share, a record is committed on its own once its window is over.
    await within(db.write(insert_into_t("delivered"), lazy=True), "a record alone, its window over")
    assert db.commits == before + 2
    rows = await db.read(values_of_t())
    assert sorted(rows) == sorted(["claim", "delivered", *(f"sent {i}" for i in range(5))])

    with pytest.raises(ValueError, match="urgent or lazy"):
        await db.write(insert_into_t("x"), urgent=True, lazy=True)
    await db.close()


async def test_an_alarm_write_is_not_held_back_by_records_waiting_to_share_a_commit(db_target):
    db = Database(db_target, lazy_window_s=60.0)  # the alarm comes well within
    await db.open()
    await db.write(lambda c: c.execute(sa.text("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)")))
    release = threading.Event()

    def slow_record(c):
        release.wait(40)  # would hold back any commit it joined
        c.execute(sa.text("INSERT INTO t (n, v) VALUES (2, 'record')"))

    record = asyncio.ensure_future(db.write(slow_record, lazy=True))
    await asyncio.sleep(0)  # queued first; the writer waits for company
    # Held back, the alarm would wait for the record's 40 s, or its window's 60 s.
    await within(
        db.write(
            lambda c: c.execute(sa.text("INSERT INTO t (n, v) VALUES (1, 'alarm')")), urgent=True
        ),
        "the alarm committed while the record waits",
    )
    assert not record.done()
    release.set()
    await db.write(lambda c: None)  # the next commit carries it, well within its window
    await within(record, "the record carried by the next commit, not at its window's end")
    assert await db.read(values_of_t("n")) == ["alarm", "record"]
    await db.close()


async def test_closing_commits_the_records_still_waiting_at_once(db_target):
    db = Database(db_target, lazy_window_s=10.0)
    await db.open()
    await db.write(lambda c: c.execute(sa.text("CREATE TABLE t (v TEXT)")))
    record = asyncio.ensure_future(db.write(insert_into_t("sent"), lazy=True))
    await asyncio.sleep(0)
    await db.close()
    assert record.done()
    again = Database(db_target)
    await again.open()
    assert await again.read(values_of_t()) == ["sent"]
    await again.close()


async def test_records_go_a_few_at_a_time_so_no_transaction_of_them_is_long(db_target):
    db = Database(db_target, lazy_window_s=60.0, lazy_max_batch=4)
    await db.open()
    await db.write(lambda c: c.execute(sa.text("CREATE TABLE t (v INTEGER)")))
    before = db.commits

    records = asyncio.gather(*(db.write(insert_into_t(i), lazy=True) for i in range(12)))
    await within(records, "twelve records, four a commit, before their minute's window")
    assert db.commits == before + 3
    await db.close()


async def test_the_writer_copies_the_wal_into_the_database_file_when_it_is_idle(tmp_path):
    # SQLite would do it inside whichever commit crossed 1,000 pages: an alarm's, now
    # and then, whose receipt then waited for the copy and its fsync.
    path = tmp_path / "t.db"
    db = Database(path)
    await db.open()
    await db.write(lambda c: c.execute(sa.text("CREATE TABLE t (v TEXT)")))

    def rows_in_the_database_file_alone() -> int:
        alone = tmp_path / "alone.db"
        alone.write_bytes(path.read_bytes())  # the file without its WAL
        conn = sqlite3.connect(alone)
        try:
            return conn.execute("SELECT count(*) FROM t").fetchone()[0]
        except sqlite3.OperationalError:  # not even the table yet
            return 0
        finally:
            conn.close()
            alone.unlink()

    for i in range(IDLE_CHECKPOINT_COMMITS - 2):  # one commit each, the writer idle between
        await db.write(insert_into_t(f"r{i}"))
    assert db.checkpoints == 0
    assert rows_in_the_database_file_alone() == 0  # all of it in the WAL so far

    await db.write(insert_into_t("last"))
    # The writer's thread counts them.
    await until(lambda: db.checkpoints > 0, timeout=20, message="a checkpoint once idle")
    assert rows_in_the_database_file_alone() == IDLE_CHECKPOINT_COMMITS - 1
    await db.close()


async def test_each_commit_is_timed_and_a_slow_disk_is_logged_without_flooding_the_log(
    db_target, caplog
):
    took: list[float] = []
    # A disk that is never slow, whatever this machine's is doing: a limit of an hour.
    db = Database(db_target, on_commit=took.append, slow_commit_s=3600.0)
    await db.open()
    await db.write(lambda c: c.execute(sa.text("CREATE TABLE t (v INTEGER)")))
    for i in range(3):
        await db.write(insert_into_t(i))
    assert len(took) == 4 and all(t > 0 for t in took)
    assert db.slow_commits == 0

    # A disk slower than the limit, for every commit from here: said once, then counted.
    db.slow_commit_s = 0.0
    with caplog.at_level(logging.WARNING, logger="hub.storage.db"):
        for i in range(5):
            await db.write(insert_into_t(i))
    assert db.slow_commits == 5
    warnings = [r.getMessage() for r in caplog.records if r.name == "hub.storage.db"]
    assert len(warnings) == 1, warnings
    assert "the disk is slow" in warnings[0] and "every receipt waits" in warnings[0]
    await db.close()


async def test_a_failing_commit_observer_does_not_stop_the_writes(db_target):
    def broken(_took: float) -> None:
        raise ValueError("metrics are down")

    db = Database(db_target, on_commit=broken)
    await db.open()
    await db.write(lambda c: c.execute(sa.text("CREATE TABLE t (v INTEGER)")))
    assert await db.write(insert_into_t(1)) == 1
    assert await db.read(lambda c: c.execute(sa.text("SELECT count(*) FROM t")).scalar_one()) == 1
    await db.close()


async def test_the_writer_reconnects_when_the_database_server_drops_it(postgres):
    db_target = postgres.new_database()
    db = Database(db_target)
    await db.open()
    await db.write(lambda c: c.execute(sa.text("CREATE TABLE t (v INTEGER)")))
    writer_pid = await db.write(
        lambda c: c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    )
    # An operator restarting the server, or a failover, drops every connection.
    admin = create_engine(db_target)
    with admin.begin() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": writer_pid})
    admin.dispose()

    # The write that finds the connection gone fails (its caller retries or reports);
    # the ones after it are stored on a new connection.
    with pytest.raises(sa.exc.DBAPIError):
        await db.write(insert_into_t(1))
    assert await db.write(insert_into_t(2)) == 1
    assert await db.read(values_of_t()) == [2]
    await db.close()
    postgres.drop_database(db_target)
