"""The database with one owner: every write goes through one writer thread, reads through a pool.

SQLite (a file, the default) or PostgreSQL (a URL), through SQLAlchemy Core; no database
call runs on the event loop. Writes queued while the writer is busy are
committed together (group commit): each in its own SAVEPOINT, so one failing write
rolls back alone, and one fsync makes the whole batch durable.

Urgent writes (a panel's event, whose receipt waits on the commit) go ahead of the
rest: one arriving while other writes are being run joins their transaction at the
next write's boundary, and the transaction is committed right after it.

Lazy writes (records nobody waits on in a hurry: a send's outcome, a delivery report)
may wait up to LAZY_WINDOW_S for another commit to share. Each commit is an fsync, and
under load these records, one commit each, kept the writer busy half the time: an alarm
arriving then waited for their fsync before its own. At most LAZY_MAX_BATCH of them go
in one transaction: a longer one is more likely to be running when an alarm arrives.

Checkpoints (copying the WAL back into the database file, with an fsync of its own) are
taken by the writer once it has had nothing to do for CHECKPOINT_IDLE_S, after
IDLE_CHECKPOINT_COMMITS commits. Left to SQLite, the commit that crosses 1,000 pages in
the WAL runs one, 1.5-2.5 ms more: 2-3% of alarms waited for it before their receipts.
Under heavy load the writer is seldom idle that long and SQLite's own checkpoint does
most of the work, as before: taken at every short pause instead, checkpoints came more
often and held the next alarm (receipts at 500/s waited longer).

Every commit is timed: `on_commit` hears how long each took (the hub's metrics), and a
commit of SLOW_COMMIT_S or more is logged, at most once per SLOW_COMMIT_LOG_EVERY_S. A
disk that holds an fsync for half a second holds every receipt as long, and nothing in
the hub can make up for it: the operator should hear of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection

from hub.storage.migrations import upgrade

logger = logging.getLogger(__name__)

Conn = Connection
T = TypeVar("T")
WriteFn = Callable[[Conn], T]

_MAX_BATCH = 256
LAZY_WINDOW_S = 0.02
LAZY_MAX_BATCH = 6
IDLE_CHECKPOINT_COMMITS = 50
CHECKPOINT_IDLE_S = 0.005
SLOW_COMMIT_S = 0.5
SLOW_COMMIT_LOG_EVERY_S = 60.0
_STOP = object()


@dataclass
class _WriteJob:
    fn: Callable[[Conn], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    urgent: bool = False
    due: float | None = None  # lazy: committed by then (time.monotonic()) at the latest


class DatabaseClosed(RuntimeError):
    """The database was closed; no more reads or writes are taken."""


def database_url(target: str | Path) -> sa.URL:
    """The SQLAlchemy URL of a SQLite file's path or of a database URL.

    `postgresql://…` (or `postgres://…`) is driven by psycopg 3; `sqlite:///…` and a
    plain path by the sqlite3 module. Raises ValueError for any other database.
    """
    text = str(target)
    if "://" not in text:
        return sa.URL.create("sqlite+pysqlite", database=text)
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError:
        raise ValueError(f"{_without_password(text)!r} is not a database URL") from None
    backend = url.get_backend_name()
    if backend in {"postgresql", "postgres"}:
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and url.database and url.database != ":memory:":
        return url.set(drivername="sqlite+pysqlite")
    raise ValueError(
        f"{_without_password(text)!r}: tenhub stores its data in PostgreSQL"
        " (postgresql://user:password@host/dbname) or in a SQLite file (sqlite:///path)"
    )


def display_target(target: str | Path) -> str:
    """A SQLite path as it is, a database URL without its password: for logs and messages."""
    text = str(target)
    return _without_password(text) if "://" in text else text


def _without_password(text: str) -> str:
    try:
        return sa.make_url(text).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return text.split("@")[-1]


def create_sibling_database(server_url: str, name: str) -> str:
    """Create an empty PostgreSQL database `name` on the server of `server_url`; its URL.

    For tools that need a database of their own per run (the bench): the hub creates its
    schema when it opens it.
    """
    url = database_url(server_url)
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the PostgreSQL database of `url` (from its server's `postgres` database)."""
    target = database_url(url)
    admin = sa.create_engine(
        target.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
    finally:
        admin.dispose()


def create_engine(target: str | Path, *, read_only: bool = False, pool_size: int = 1) -> sa.Engine:
    """An engine on the database, set up as the hub uses it.

    SQLite: WAL, `synchronous=FULL` (a commit is on disk before a panel hears its alarm
    is stored), foreign keys on, a writer's transactions opened with BEGIN IMMEDIATE.
    read_only: its connections cannot write (SQLite's query_only, PostgreSQL's read-only
    transactions).
    """
    url = database_url(target)
    if url.get_backend_name() == "postgresql":
        options = "-c default_transaction_read_only=on" if read_only else ""
        return sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            connect_args={"options": options} if options else {},
        )
    engine = sa.create_engine(
        url, pool_size=pool_size, max_overflow=0, connect_args={"timeout": 30}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Transactions are opened by SQLAlchemy (below), not guessed by the sqlite3
        # module, which would leave SELECTs and SAVEPOINTs outside them.
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA busy_timeout = 30000")
        dbapi_conn.execute("PRAGMA foreign_keys = ON")
        if read_only:
            dbapi_conn.execute("PRAGMA query_only = ON")
        else:
            dbapi_conn.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before the hub tells a panel its alarm is stored.
            dbapi_conn.execute("PRAGMA synchronous = FULL")

    begin = "BEGIN" if read_only else "BEGIN IMMEDIATE"

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    """The hub's database: `write(fn)` on the one writer, `read(fn)` on a pool.

    `target` is the path of a SQLite file or a database URL (see `database_url`).
    """

    def __init__(
        self,
        target: str | Path,
        *,
        readers: int = 4,
        lazy_window_s: float = LAZY_WINDOW_S,
        lazy_max_batch: int = LAZY_MAX_BATCH,
        on_commit: Callable[[float], None] | None = None,
        slow_commit_s: float = SLOW_COMMIT_S,
    ) -> None:
        if lazy_max_batch < 1:
            raise ValueError("lazy_max_batch must be at least 1")
        self.url = database_url(target)
        self.dialect = self.url.get_backend_name()  # "sqlite" or "postgresql"
        # The SQLite file; None for a database on a server.
        self.path = self.url.database if self.dialect == "sqlite" else None
        self.lazy_window_s = lazy_window_s
        self.lazy_max_batch = lazy_max_batch
        self._readers = readers
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._write_engine: sa.Engine | None = None
        self._read_engine: sa.Engine | None = None
        self._closed = False
        self.schema_version = 0
        self.commits = 0  # write transactions committed so far: each one an fsync
        self.checkpoints = 0  # checkpoints the writer took while idle
        self._checkpointed_at = 0  # self.commits at the last one
        self.on_commit = on_commit  # called on the writer thread with each commit's seconds
        self.slow_commit_s = slow_commit_s
        self.slow_commits = 0  # commits that took slow_commit_s or more
        self._slow_logged: tuple[float, int] | None = None  # when, and slow_commits then

    def display(self) -> str:
        """Where the data is, for logs and messages: the file, or the URL without password."""
        return self.path or self.url.render_as_string(hide_password=True)

    async def open(self) -> None:
        """Create the database if needed, bring its schema up to date, start the writer."""
        conn = await asyncio.to_thread(self._open_writer)
        # Named as before PostgreSQL came: the names label the threads' CPU in /metrics.
        self._writer = threading.Thread(
            target=self._writer_loop, args=(conn,), name="sqlite-writer", daemon=True
        )
        self._writer.start()
        self._read_engine = create_engine(self.url, read_only=True, pool_size=self._readers)
        self._pool = ThreadPoolExecutor(self._readers, thread_name_prefix="sqlite-reader")

    def _open_writer(self) -> Connection:
        if self.path is not None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._write_engine = create_engine(self.url)
        conn = self._write_engine.connect()
        try:
            self.schema_version = upgrade(conn)
        except BaseException:
            conn.close()
            self._write_engine.dispose()
            raise
        return conn

    async def write(self, fn: WriteFn[T], *, urgent: bool = False, lazy: bool = False) -> T:
        """Run fn(conn) in a write transaction on the writer thread; its result once committed.

        fn neither commits nor rolls back: it runs in a savepoint of a transaction shared
        with other writes, and an exception it raises undoes its own writes alone.
        urgent: someone is waiting on this commit (a panel for its receipt); it is
        committed before the other writes queued with it.
        lazy: nobody is waiting on it in a hurry; it may wait up to `lazy_window_s` (or
        until `lazy_max_batch` such writes wait) to be committed with other writes.
        """
        if urgent and lazy:
            raise ValueError("a write is urgent or lazy, not both")
        if self._closed or self._writer is None:
            raise DatabaseClosed("database is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        due = time.monotonic() + self.lazy_window_s if lazy else None
        self._queue.put(_WriteJob(fn, future, loop, urgent, due))
        return await future

    def queued(self) -> int:
        """Writes waiting for the writer to take them (those it is running not counted)."""
        return self._queue.qsize()

    async def read(self, fn: Callable[[Conn], T]) -> T:
        """Run fn(conn) in a read-only transaction on a connection of the reader pool."""
        if self._closed or self._pool is None:
            raise DatabaseClosed("database is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run_read, fn)

    def _run_read(self, fn: Callable[[Conn], T]) -> T:
        assert self._read_engine is not None
        with self._read_engine.connect() as conn, conn.begin():
            return fn(conn)

    async def close(self) -> None:
        """Finish the queued writes, then close every connection."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for engine in (self._read_engine, self._write_engine):
            if engine is not None:
                await asyncio.to_thread(engine.dispose)

    def _writer_loop(self, conn: Connection) -> None:
        lanes = _Lanes(self._queue, self.lazy_max_batch)
        while True:
            lanes.take_all()
            now = time.monotonic()
            if lanes.ready(now):
                conn = self._commit_batch(conn, lanes.batch(_MAX_BATCH))
            elif lanes.stopping:  # every job queued before the stop is committed
                break
            else:
                wait = lanes.wait_s(now)  # None: nothing waits to be committed
                if self._checkpoint_due() and (wait is None or wait > CHECKPOINT_IDLE_S):
                    # Only once idle a while: at a mere pause between jobs, the next
                    # one (an alarm's, as likely as not) would wait for the checkpoint.
                    try:
                        lanes.add(self._queue.get(timeout=CHECKPOINT_IDLE_S))
                    except queue.Empty:
                        self._checkpoint(conn)
                    continue
                # Until a job comes or the oldest lazy job's window is over.
                with contextlib.suppress(queue.Empty):
                    lanes.add(self._queue.get(timeout=wait))
        conn.close()

    def _timed(self, took: float) -> None:
        """Tell on_commit how long a commit took; log it if it was slow (not too often)."""
        if self.on_commit is not None:
            try:
                self.on_commit(took)
            except Exception:  # a metric must not take the writer down
                logger.exception("commit observer failed")
        if took < self.slow_commit_s:
            return
        self.slow_commits += 1
        now = time.monotonic()
        if self._slow_logged is not None and now - self._slow_logged[0] < SLOW_COMMIT_LOG_EVERY_S:
            return
        since = self.slow_commits - (self._slow_logged[1] if self._slow_logged else 0)
        self._slow_logged = (now, self.slow_commits)
        logger.warning(
            "a commit took %.2f s (%d commit(s) of %.2f s or more since the last such"
            " warning): the disk is slow to make writes durable, and every receipt waits"
            " for it", took, since, self.slow_commit_s,
        )  # fmt: skip

    def _checkpoint_due(self) -> bool:
        """Whether enough commits went by since the writer's last checkpoint (SQLite only)."""
        return (
            self.dialect == "sqlite"
            and self.commits - self._checkpointed_at >= IDLE_CHECKPOINT_COMMITS
        )

    def _checkpoint(self, conn: Connection) -> None:
        """Copy what the WAL holds into the database file, as far as readers let it now."""
        # Counted from here even if it fails: tried again after as many commits, not in
        # a busy loop; SQLite's own checkpoint is the backstop meanwhile.
        self._checkpointed_at = self.commits
        try:
            # On the driver's connection: SQLAlchemy would open a transaction first, and
            # a checkpoint is taken outside any.
            conn.connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception:
            logger.exception("checkpoint failed")
            return
        self.checkpoints += 1

    def _commit_batch(
        self, conn: Connection, next_job: Callable[[], _WriteJob | None]
    ) -> Connection:
        """Run jobs from next_job() until it gives None, and commit them together.

        Returns the connection for the next batch: a new one if this one was lost.
        """
        outcomes: list[tuple[_WriteJob, bool, Any]] = []
        batch: list[_WriteJob] = []
        try:
            transaction = conn.begin()
            while (job := next_job()) is not None:
                batch.append(job)
                # Plain SQL rather than begin_nested(), which names each savepoint anew
                # and so compiles its SAVEPOINT and RELEASE for every write: 0.15 ms of
                # the writer's time per write, on the path of every receipt.
                conn.exec_driver_sql("SAVEPOINT job")
                try:
                    result = job.fn(conn)
                except BaseException as exc:  # the job's own failure: undo only its writes
                    conn.exec_driver_sql("ROLLBACK TO SAVEPOINT job")
                    conn.exec_driver_sql("RELEASE SAVEPOINT job")
                    outcomes.append((job, False, exc))
                else:
                    conn.exec_driver_sql("RELEASE SAVEPOINT job")
                    outcomes.append((job, True, result))
            started = time.perf_counter()
            transaction.commit()
            self.commits += 1
            self._timed(time.perf_counter() - started)
        except sa.exc.SQLAlchemyError as exc:
            logger.exception("write batch failed; rolled back")
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.rollback()
            outcomes = [(job, False, exc) for job in batch]
            conn = self._reconnect_if_lost(conn)
        # One wake-up per event loop for the whole batch: each call_soon_threadsafe
        # writes to the loop's self-pipe, and the loop has better things to do.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, ok, value in outcomes:
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, settled in by_loop.items():
            # RuntimeError: the caller's event loop is gone; the writes themselves stand.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_all, settled)
        return conn

    def _reconnect_if_lost(self, conn: Connection) -> Connection:
        """The writer's connection, or a new one if the database server dropped it."""
        if not conn.invalidated:
            return conn
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            conn.close()
        assert self._write_engine is not None
        try:
            return self._write_engine.connect()
        except sa.exc.SQLAlchemyError:
            # Still unreachable: this connection reconnects on its next use.
            logger.exception("cannot reconnect to the database; trying again with the next write")
            return conn


class _Lanes:
    """The writer's queued jobs, urgent and lazy ones apart; only the writer thread
    touches it."""

    def __init__(self, source: queue.SimpleQueue[Any], lazy_max: int) -> None:
        self.source = source
        self.lazy_max = lazy_max
        self.urgent: deque[_WriteJob] = deque()
        self.other: deque[_WriteJob] = deque()
        self.lazy: deque[_WriteJob] = deque()  # in the order queued, so by due time
        self.stopping = False

    def ready(self, now: float) -> bool:
        """Whether a transaction should start now."""
        if self.urgent or self.other or len(self.lazy) >= self.lazy_max:
            return True
        return bool(self.lazy) and (self.stopping or self.lazy[0].due <= now)  # type: ignore[operator]

    def wait_s(self, now: float) -> float | None:
        """How long the writer may wait for more jobs; None: until one comes."""
        if not self.lazy:
            return None
        return max(0.0, self.lazy[0].due - now)  # type: ignore[operator]

    def add(self, item: Any) -> None:
        if item is _STOP:
            self.stopping = True  # the jobs queued before it are still committed
        elif item.urgent:
            self.urgent.append(item)
        elif item.due is not None:
            self.lazy.append(item)
        else:
            self.other.append(item)

    def take_all(self) -> None:
        """Move every job waiting in the source queue here, without blocking."""
        while True:
            try:
                self.add(self.source.get_nowait())
            except queue.Empty:
                return

    def batch(self, limit: int) -> Callable[[], _WriteJob | None]:
        """The jobs of one transaction, one at a time, then None (at most `limit`).

        Urgent jobs first. Other jobs only while no urgent one waits, then at most
        `lazy_max` lazy ones: urgent jobs that arrive are run next, and the transaction
        ends with them, so their commit is the next one made. Urgent jobs arriving after
        that wait for the next transaction: each one would hold back the commit of those
        before it. Lazy jobs never join an urgent job's transaction.
        """
        given, urgent_left, lazy_given = 0, -1, 0

        def next_job() -> _WriteJob | None:
            nonlocal given, urgent_left, lazy_given
            if urgent_left == -1:  # no urgent job taken yet
                if given == limit:
                    return None
                if given:
                    self.take_all()
                if not self.urgent:
                    if self.other:
                        given += 1
                        return self.other.popleft()
                    if not self.lazy or lazy_given == self.lazy_max:
                        return None
                    given += 1
                    lazy_given += 1
                    return self.lazy.popleft()
                urgent_left = min(len(self.urgent), limit)
            if urgent_left == 0:
                return None
            urgent_left -= 1
            given += 1
            return self.urgent.popleft()

        return next_job


def _settle_all(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in settled:
        if future.done():  # the caller gave up waiting; the write itself stands
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
