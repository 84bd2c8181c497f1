"""A real PostgreSQL server for the tests: started on a free port in a throwaway folder.

Debian's `postgresql` package provides initdb and pg_ctl; nothing needs to run beforehand.
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user.
Each test gets a database of its own, copied from a template already migrated (a copy
takes milliseconds, a migration tenths of a second).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy as sa

from hub.storage.db import create_engine
from hub.storage.migrations import upgrade
from tests.brokers import free_port

TEMPLATE = "tenhub_template"


def postgres_bindir() -> Path:
    """The folder of initdb and pg_ctl; RuntimeError saying what to install if none."""
    candidates: list[Path] = []
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        bindir = subprocess.run(
            ["pg_config", "--bindir"], capture_output=True, text=True, check=True
        ).stdout.strip()
        candidates.append(Path(bindir))
    # Debian keeps the server's programs in a folder per major version.
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    ) if Path("/usr/lib/postgresql").is_dir() else []  # fmt: skip
    candidates += versions
    for which in ("initdb", "pg_ctl"):
        found = shutil.which(which)
        if found:
            candidates.append(Path(found).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise RuntimeError(
        "PostgreSQL's initdb and pg_ctl were not found: install the postgresql package"
        " (apt-get install postgresql) to run the tests on PostgreSQL"
    )


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1; `new_database()` for each test."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        # Not under pytest's own temporary folder: as root, that one is closed to the
        # postgres user the server runs as.
        self.dir = Path(tempfile.mkdtemp(prefix="tenhub-postgres-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "tenhub"
        self._names = itertools.count(1)
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed:\n{result.stdout}{result.stderr}")

    def start(self) -> None:
        """initdb, then start the server and wait until it takes connections."""
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", self.user, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        # A test server: its data lives as long as the test session, so it need not
        # survive a power cut (fsync off); the hub's own commits still wait for it.
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1"
            f" -c unix_socket_directories={self.dir} -c fsync=off -c full_page_writes=off"
            " -c max_connections=300"
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.data), "-w", "-t", "60",
            "-l", str(self.dir / "server.log"), "-o", options,
        )  # fmt: skip
        self._make_template()

    def url(self, database: str = "postgres") -> str:
        """The URL of one of the server's databases."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def _admin(self, *statements: str) -> None:
        engine = sa.create_engine(
            self.url().replace("postgresql://", "postgresql+psycopg://"),
            isolation_level="AUTOCOMMIT",  # CREATE DATABASE runs outside a transaction
            poolclass=sa.pool.NullPool,
        )
        try:
            with engine.connect() as conn:
                for statement in statements:
                    conn.exec_driver_sql(statement)
        finally:
            engine.dispose()

    def _make_template(self) -> None:
        self._admin(f"CREATE DATABASE {TEMPLATE}")
        engine = create_engine(self.url(TEMPLATE))
        try:
            with engine.connect() as conn:
                upgrade(conn)
        finally:
            engine.dispose()

    def new_database(self, *, migrated: bool = True) -> str:
        """A database of its own, at the newest schema (or empty); its URL."""
        name = f"t{next(self._names)}"
        template = TEMPLATE if migrated else "template0"
        self._admin(f"CREATE DATABASE {name} TEMPLATE {template} STRATEGY FILE_COPY")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a test's database, closing what is still connected to it."""
        name = sa.make_url(url).database
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Stop the server and remove its files."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
