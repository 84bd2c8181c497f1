"""What the HTTP API promises integrators: the ranges of the numbers it takes (declared
in `/openapi.json` and on `/docs`).

A number out of range is refused with 422 before it reaches the database, whose integers
end at 2**63 - 1: past that, SQLite cannot even compare with it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

# The last millisecond of the year 9999: no clock reads later, and no date is written so.
EPOCH_MS_MAX = 253_402_300_799_999
SQLITE_INT_MAX = 2**63 - 1

EpochMs = Annotated[int, Field(ge=0, le=EPOCH_MS_MAX)]
"""An instant in milliseconds since 1970-01-01 UTC, through the year 9999."""

Limit = Annotated[int, Field(ge=1, le=1000)]
"""How many items a list answers at most."""

RowId = Annotated[int, Field(ge=1, le=SQLITE_INT_MAX)]
"""The number the database gave a stored row (a trouble)."""
