"""Storage: the database, SQLite or PostgreSQL, behind one interface.

Owns the engine (SQLAlchemy Core over sqlite3 or psycopg), the one writer with its group
commit, the read pool, and the schema's migrations (Alembic). Stores in other packages
hand it functions to run inside a transaction; nothing else opens a connection.
"""
