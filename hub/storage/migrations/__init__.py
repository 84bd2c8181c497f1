"""Schema migrations: Alembic revisions 0001, 0002, … applied in order when the hub opens.

A revision is never edited once released; a change of schema is a new revision. The
revisions are written once for SQLite and PostgreSQL alike; a dialect branch is kept for
what one of them cannot say the other's way (triggers, a case-insensitive username).

SQLite files written before Alembic kept their version in `PRAGMA user_version`: such a
file at version N is stamped at revision N and upgraded from there, its data kept. After
an upgrade a SQLite file's `user_version` is set to the revision's number too, so a tenhub
older than Alembic refuses it as newer than itself instead of writing to it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

logger = logging.getLogger(__name__)

_HERE = Path(__file__).resolve().parent


class _OnlyRevisions(logging.Filter):
    """Keeps Alembic's lines about revisions run, not those about itself at every open."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Context impl", "Will assume"))


logging.getLogger("alembic.runtime.migration").addFilter(_OnlyRevisions())


class SchemaTooNew(RuntimeError):
    """The database was written by a newer tenhub than this one."""


@functools.cache
def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    return config


@functools.cache
def _script() -> ScriptDirectory:
    # Read once per process: every hub, CLI command and test opens a database.
    return ScriptDirectory.from_config(_config())


def head() -> int:
    """The newest revision this tenhub knows, as a number (12 for revision 0012)."""
    return int(_script().get_current_head() or 0)


def current_version(conn: Connection) -> int:
    """The revision the database is at, as a number; 0 for an empty database."""
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is not None:
        return int(revision)
    if conn.dialect.name == "sqlite":
        return conn.exec_driver_sql("PRAGMA user_version").scalar_one()
    return 0


def upgrade(conn: Connection) -> int:
    """Bring the database up to the newest revision; its version number.

    `conn` is outside any transaction; each revision commits on its own. Raises
    SchemaTooNew if the database is at a revision this tenhub does not know.
    """
    newest = head()
    known = {script.revision for script in _script().walk_revisions()}
    revision = MigrationContext.configure(conn).get_current_revision()
    conn.commit()  # the look-up began a transaction: Alembic begins its own
    if revision is not None and revision not in known:
        raise _too_new(revision, newest)
    if revision is None and conn.dialect.name == "sqlite":
        _stamp_pre_alembic_file(conn, newest)
    if revision != _script().get_current_head():
        config = _config()
        config.attributes["connection"] = conn
        try:
            command.upgrade(config, "head")
        finally:
            config.attributes.pop("connection", None)
        conn.commit()  # what Alembic's own look-ups began, once it has nothing to run
        if conn.dialect.name == "sqlite":
            with conn.begin():
                conn.exec_driver_sql(f"PRAGMA user_version = {newest}")
    return newest


def _stamp_pre_alembic_file(conn: Connection, newest: int) -> None:
    """A SQLite file made before Alembic: record its `user_version` as its revision."""
    version = conn.exec_driver_sql("PRAGMA user_version").scalar_one()
    conn.commit()
    if version == 0:
        return
    if version > newest:
        raise _too_new(str(version), newest)
    logger.info("upgrading a database made before revisions", extra={"version": version})
    with conn.begin():
        MigrationContext.configure(conn).stamp(_script(), f"{version:04d}")


def _too_new(revision: str, newest: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"database schema version {revision} is newer than this tenhub knows ({newest});"
        " run a newer tenhub"
    )
