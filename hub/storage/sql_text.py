"""Textual SQL for the stores, with its result columns named up front.

SQLAlchemy reads the columns of a plain `text()` result from the driver at every
execution; named here, the result's layout is worked out once and cached with the
compiled statement (a third of the cost of a query on the alarm's path).
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import TextualSelect, bindparam, column, text


def query(sql: str, *columns: str, lists: Iterable[str] = ()) -> TextualSelect:
    """`sql` (with :named parameters) whose rows hold `columns`, in this order.

    `lists` names the parameters given as a list, for `IN :name`.
    """
    statement = text(sql)
    if lists:
        statement = statement.bindparams(*(bindparam(name, expanding=True) for name in lists))
    return statement.columns(*(column(name) for name in columns))
