"""The database has one writer: writes are atomic one by one, even when committed together."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading

import pytest

from hub.db import IDLE_CHECKPOINT_COMMITS, Database
from hub.migrations import MIGRATIONS, SchemaTooNew
from tests.waiting import until, within

pytestmark = pytest.mark.asyncio


async def test_a_new_database_gets_the_newest_schema_and_keeps_it_on_reopen(tmp_path):
    db = Database(tmp_path / "t.db")
    await db.open()
    assert db.schema_version == MIGRATIONS[-1][0]
    await db.close()
    again = Database(tmp_path / "t.db")
    await again.open()
    assert again.schema_version == MIGRATIONS[-1][0]
    tables = await again.read(lambda d: set(d.table_names()))
    assert {"alarms", "alarm_timeline", "panel_events", "outbox"} <= tables
    await again.close()


async def test_a_database_from_a_newer_tenhub_is_refused(tmp_path):
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer"):
        await Database(path).open()


async def test_writes_committed_together_fail_alone(tmp_path):
    db = Database(tmp_path / "t.db")
    await db.open()
    await db.write(lambda d: d.execute("CREATE TABLE t (v INTEGER UNIQUE)"))

    def insert(v):
        return lambda d: d.execute("INSERT INTO t (v) VALUES (?)", (v,)).rowcount

    # 1 and 3 twice: the second of each must fail without undoing the others.
    results = await asyncio.gather(
        *(db.write(insert(v)) for v in [1, 2, 1, 3, 3, 4]), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, Exception)]
    assert len(failures) == 2 and all(isinstance(f, sqlite3.IntegrityError) for f in failures)
    rows = await db.read(lambda d: [r[0] for r in d.execute("SELECT v FROM t ORDER BY v")])
    assert rows == [1, 2, 3, 4]
    await db.close()


async def test_the_timeline_cannot_be_rewritten(tmp_path):
    db = Database(tmp_path / "t.db")
    await db.open()
    await db.write(
        lambda d: d.execute(
            "INSERT INTO alarms (id, unit_id, household_id, panel_id, kind, state, raised_at,"
            " panel_ts, seq, updated_at) VALUES ('a-1', 'u-1', 'h-1', 'p-1', 'fire', 'raised',"
            " 1, 1, 1, 1)"
        )
    )
    await db.write(
        lambda d: d.execute(
            "INSERT INTO alarm_timeline (alarm_id, at, entry, state) VALUES ('a-1', 1, 'raised',"
            " 'raised')"
        )
    )
    for sql in ("UPDATE alarm_timeline SET entry = 'x'", "DELETE FROM alarm_timeline"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            await db.write(lambda d, sql=sql: d.execute(sql))
    await db.close()


async def test_reads_do_not_write(tmp_path):
    db = Database(tmp_path / "t.db")
    await db.open()
    with pytest.raises(sqlite3.OperationalError):
        await db.read(lambda d: d.execute("CREATE TABLE nope (x)"))
    await db.close()


async def test_an_alarm_write_goes_ahead_of_the_writes_queued_before_it(tmp_path):
    db = Database(tmp_path / "t.db")
    await db.open()
    await db.write(lambda d: d.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)"))
    started, release = threading.Event(), threading.Event()

    def slow(d):
        started.set()
        release.wait(30)  # the writer is busy with a long write
        d.execute("INSERT INTO t (v) VALUES ('first')")

    def insert(v):
        return lambda d: d.execute("INSERT INTO t (v) VALUES (?)", (v,))

    first = asyncio.ensure_future(db.write(slow))
    assert await asyncio.to_thread(started.wait, 20), "the long write never started"
    others = [asyncio.ensure_future(db.write(insert(f"other {i}"))) for i in range(5)]
    alarm = asyncio.ensure_future(db.write(insert("alarm"), urgent=True))
    # All six queued behind the long write (the writer takes none while it is busy).
    await until(lambda: db._queue.qsize() == 6, timeout=20, message="six writes queued")
    release.set()
    await asyncio.gather(first, alarm, *others)
    # The alarm is committed right after the write in progress, before those queued earlier.
    rows = await db.read(lambda d: [r[0] for r in d.execute("SELECT v FROM t ORDER BY n")])
    assert rows == ["first", "alarm", *(f"other {i}" for i in range(5))]
    await db.close()


async def test_records_nobody_waits_on_share_the_next_commit(tmp_path):
    db = Database(tmp_path / "t.db", lazy_window_s=0.2)
    await db.open()
    await db.write(lambda d: d.execute("CREATE TABLE t (v TEXT)"))

    def insert(v):
        return lambda d: d.execute("INSERT INTO t (v) VALUES (?)", (v,))

    # Five sends' outcomes recorded, then an SMS claimed: one commit (one fsync) for all.
    before = db.commits
    records = [asyncio.ensure_future(db.write(insert(f"sent {i}"), lazy=True)) for i in range(5)]
    await asyncio.sleep(0)  # queued first
    await db.write(insert("claim"))
    await asyncio.gather(*records)
    assert db.commits == before + 1

    # With nothing to share, a record is committed on its own once its window is over.
    await within(db.write(insert("delivered"), lazy=True), "a record alone, its window over")
    assert db.commits == before + 2
    rows = await db.read(lambda d: [r[0] for r in d.execute("SELECT v FROM t")])
    assert sorted(rows) == sorted(["claim", "delivered", *(f"sent {i}" for i in range(5))])

    with pytest.raises(ValueError, match="urgent or lazy"):
        await db.write(insert("x"), urgent=True, lazy=True)
    await db.close()


async def test_an_alarm_write_is_not_held_back_by_records_waiting_to_share_a_commit(tmp_path):
    db = Database(tmp_path / "t.db", lazy_window_s=60.0)  # the alarm comes well within
    await db.open()
    await db.write(lambda d: d.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)"))
    release = threading.Event()

    def slow_record(d):
        release.wait(40)  # would hold back any commit it joined
        d.execute("INSERT INTO t (v) VALUES ('record')")

    record = asyncio.ensure_future(db.write(slow_record, lazy=True))
    await asyncio.sleep(0)  # queued first; the writer waits for company
    # Held back, the alarm would wait for the record's 40 s, or its window's 60 s.
    await within(
        db.write(lambda d: d.execute("INSERT INTO t (v) VALUES ('alarm')"), urgent=True),
        "the alarm committed while the record waits",
    )
    assert not record.done()
    release.set()
    await db.write(lambda d: None)  # the next commit carries it, well within its window
    await within(record, "the record carried by the next commit, not at its window's end")
    rows = await db.read(lambda d: [r[0] for r in d.execute("SELECT v FROM t ORDER BY n")])
    assert rows == ["alarm", "record"]
    await db.close()


async def test_closing_commits_the_records_still_waiting_at_once(tmp_path):
    db = Database(tmp_path / "t.db", lazy_window_s=10.0)
    await db.open()
    await db.write(lambda d: d.execute("CREATE TABLE t (v TEXT)"))
    record = asyncio.ensure_future(
        db.write(lambda d: d.execute("INSERT INTO t (v) VALUES ('sent')"), lazy=True)
    )
    await asyncio.sleep(0)
    await db.close()
    assert record.done()
    again = Database(tmp_path / "t.db")
    await again.open()
    assert await again.read(lambda d: d.execute("SELECT v FROM t").fetchall()[0][0]) == "sent"
    await again.close()


async def test_records_go_a_few_at_a_time_so_no_transaction_of_them_is_long(tmp_path):
    db = Database(tmp_path / "t.db", lazy_window_s=60.0, lazy_max_batch=4)
    await db.open()
    await db.write(lambda d: d.execute("CREATE TABLE t (v INTEGER)"))
    before = db.commits

    def record(i):
        return db.write(lambda d: d.execute("INSERT INTO t (v) VALUES (?)", (i,)), lazy=True)

    records = asyncio.gather(*(record(i) for i in range(12)))
    await within(records, "twelve records, four a commit, before their minute's window")
    assert db.commits == before + 3
    await db.close()


async def test_the_writer_copies_the_wal_into_the_database_file_when_it_is_idle(tmp_path):
    # SQLite would do it inside whichever commit crossed 1,000 pages: an alarm's, now
    # and then, whose receipt then waited for the copy and its fsync.
    path = tmp_path / "t.db"
    db = Database(path)
    await db.open()
    await db.write(lambda d: d.execute("CREATE TABLE t (v TEXT)"))

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
        await db.write(lambda d, i=i: d.execute("INSERT INTO t (v) VALUES (?)", (f"r{i}",)))
    assert db.checkpoints == 0
    assert rows_in_the_database_file_alone() == 0  # all of it in the WAL so far

    await db.write(lambda d: d.execute("INSERT INTO t (v) VALUES ('last')"))
    # The writer's thread counts them.
    await until(lambda: db.checkpoints > 0, timeout=20, message="a checkpoint once idle")
    assert rows_in_the_database_file_alone() == IDLE_CHECKPOINT_COMMITS - 1
    await db.close()


async def test_each_commit_is_timed_and_a_slow_disk_is_logged_without_flooding_the_log(
    tmp_path, caplog
):
    took: list[float] = []
    # A disk that is never slow, whatever this machine's is doing: a limit of an hour.
    db = Database(tmp_path / "t.db", on_commit=took.append, slow_commit_s=3600.0)
    await db.open()
    await db.write(lambda d: d.execute("CREATE TABLE t (v INTEGER)"))
    for i in range(3):
        await db.write(lambda d, i=i: d.execute("INSERT INTO t (v) VALUES (?)", (i,)))
    assert len(took) == 4 and all(t > 0 for t in took)
    assert db.slow_commits == 0

    # A disk slower than the limit, for every commit from here: said once, then counted.
    db.slow_commit_s = 0.0
    with caplog.at_level(logging.WARNING, logger="hub.db"):
        for i in range(5):
            await db.write(lambda d, i=i: d.execute("INSERT INTO t (v) VALUES (?)", (i,)))
    assert db.slow_commits == 5
    warnings = [r.getMessage() for r in caplog.records if r.name == "hub.db"]
    assert len(warnings) == 1, warnings
    assert "the disk is slow" in warnings[0] and "every receipt waits" in warnings[0]
    await db.close()


async def test_a_failing_commit_observer_does_not_stop_the_writes(tmp_path):
    def broken(_took: float) -> None:
        raise ValueError("metrics are down")

    db = Database(tmp_path / "t.db", on_commit=broken)
    await db.open()
    await db.write(lambda d: d.execute("CREATE TABLE t (v INTEGER)"))
    assert await db.write(lambda d: d.execute("INSERT INTO t (v) VALUES (1)").rowcount) == 1
    assert await db.read(lambda d: d.execute("SELECT count(*) FROM t").fetchone()[0]) == 1
    await db.close()
