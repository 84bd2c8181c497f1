"""What the HTTP API promises integrators: the ranges of the numbers it takes, and the
error answers its routes declare (in `/openapi.json` and on `/docs`).

A number out of range is refused with 422 before it reaches the database, whose integers
end at 2**63 - 1: past that, SQLite cannot even compare with it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

# The last millisecond of the year 9999: no clock reads later, and no date is written so.
EPOCH_MS_MAX = 253_402_300_799_999
# The largest id either database gives a row (SQLite INTEGER, PostgreSQL BIGINT).
ROW_ID_MAX = 2**63 - 1

EpochMs = Annotated[int, Field(ge=0, le=EPOCH_MS_MAX)]
"""An instant in milliseconds since 1970-01-01 UTC, through the year 9999."""

Limit = Annotated[int, Field(ge=1, le=1000)]
"""How many items a list answers at most."""

RowId = Annotated[int, Field(ge=1, le=ROW_ID_MAX)]
"""The number the database gave a stored row (a trouble)."""


class FieldProblem(BaseModel):
    """One thing wrong with the input: where (`["query", "since"]`) and what."""

    loc: list[str | int]
    msg: str
    type: str


class Refusal(BaseModel):
    """An error answer: a sentence, or for a 422 on bad input the list of what is wrong."""

    detail: str | list[FieldProblem]


class ImportRefusal(BaseModel):
    """A registry import refused: the registry was not changed, and why, line by line."""

    detail: str
    problems: list[str]


PLAIN_TEXT = {"text/plain": {"schema": {"type": "string"}}}
"""OpenAPI `content` of an answer in plain text."""

MEANINGS = {
    303: "Done: go on to the page in `Location`",
    400: "The body is not JSON (or not UTF-8), or holds a value the hub cannot take",
    401: "Not logged in: no valid session cookie or API token",
    403: "Not for your role, or the CSRF check of a browser session failed",
    404: "Nothing by that name in your zones",
    409: "Not now: it is not in a state that allows this (an alarm already over)",
    422: "A parameter or body field missing, of the wrong type or out of range",
    429: "Too many attempts: try again after `Retry-After` seconds",
    503: "The hub is not ready for this (yet)",
}


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these statuses: JSON `Refusal`s with their meanings."""
    return {code: {"model": Refusal, "description": MEANINGS[code]} for code in codes}


def pages(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these statuses answered with an HTML page (or none: a 303)."""
    return {
        code: {"description": MEANINGS[code]}
        if code == 303
        else {
            "description": MEANINGS[code],
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
        for code in codes
    }


def document(media_type: str, schema: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a 200 that is a document of this type, not JSON.

    For a route with `response_class=Response`: FastAPI declares no JSON 200 beside it,
    and declares the routes' JSON refusals as JSON (it gives a route's `model`s the
    media type of its response class).
    """
    return {200: {"content": {media_type: {"schema": schema}}}}


def raw_body(media_type: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """OpenAPI `openapi_extra` for a route that reads its body itself: what it takes."""
    content = {media_type: {"schema": schema}}
    return {"requestBody": {"required": True, "description": description, "content": content}}
