"""Alembic's environment: runs the revisions on the connection the hub opened."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# Each revision and its version stamp commit together: a hub killed mid-upgrade leaves
# the database at the last whole revision, and the next start goes on from there.
# SQLite's DDL is transactional too (Alembic assumes not, for drivers that commit on
# their own; the hub's engine opens every transaction itself).
context.configure(connection=connection, transaction_per_migration=True, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
