"""The HTTP API keeps the contract of its OpenAPI document: whatever an admin, or a client
not logged in, sends, never a server error, and every answer (status, content type, body)
one the document declares. Input out of range is refused with 422 naming the parameter,
before it reaches the database.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Iterator

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.errors import FailureGroup

from hub.passwords import hash_password
from hub.registry.model import load_registry
from hub.web.contract import EPOCH_MS_MAX
from tests.conftest import EXAMPLE_REGISTRY, db_url_of
from tests.hub_thread import HubInThread

# Bounded so that the whole run stays within a minute or two on a small machine; with no
# token, fewer: most operations then answer 401 whatever else is sent.
EXAMPLES_PER_OPERATION = 25
ANONYMOUS_EXAMPLES_PER_OPERATION = 5
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def running(mosquitto, tmp_path, db_target) -> Iterator[tuple[HubInThread, str]]:
    """A hub of its own (generated imports replace only its registry), and an admin's
    API token."""
    runner = HubInThread(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        tmp_path / "hub.db",
        load_registry(EXAMPLE_REGISTRY),
        db_url=db_url_of(db_target),
    )
    hub = runner.start()

    async def admin_token() -> str:
        password = await asyncio.to_thread(hash_password, "correct horse battery")
        admin = await hub.accounts.add_user(
            "admin", password, "admin", (), None, hub.clock.now_ms()
        )
        return await hub.accounts.new_api_token(admin.id, "schema test", hub.clock.now_ms())

    try:
        yield runner, runner.call(admin_token())
    finally:
        runner.stop()


def api_client(runner: HubInThread, token: str) -> httpx.Client:
    """A client of the hub's real HTTP server with the admin's API token."""
    return httpx.Client(
        base_url=runner.hub.public_url, headers={"Authorization": f"Bearer {token}"}
    )


@pytest.mark.one_database  # the HTTP contract, not the storage under it
def test_every_operation_answers_as_declared_and_never_with_a_server_error(running):
    runner, token = running
    base_url = runner.hub.public_url
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    # The live stream answers for as long as the client listens: a request never ends.
    schema = schema.exclude(method="GET", path="/api/events")
    # Twilio's webhooks refuse any request without Twilio's signature of the whole form,
    # made with a secret generated input cannot know: all they could answer is 403.
    schema = schema.exclude(path_regex=r"^/twilio/")
    callers = (
        ({"Authorization": f"Bearer {token}"}, EXAMPLES_PER_OPERATION),
        ({}, ANONYMOUS_EXAMPLES_PER_OPERATION),
    )
    cases: collections.Counter[str] = collections.Counter()
    server_errors: list[str] = []
    # The first case of each distinct failure: (operation, what failed, status) -> report.
    failures: dict[tuple[str, str, int], str] = {}

    def explore(session, operation, headers: dict[str, str], examples: int) -> None:
        @given(
            case=operation.as_strategy(GenerationMode.POSITIVE)
            | operation.as_strategy(GenerationMode.NEGATIVE)
        )
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are kept
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case) -> None:
            # A redirect is the answer (after a login, say), not the page it leads to.
            response = case.call(
                base_url=base_url, session=session, headers=headers, allow_redirects=False
            )
            cases[case.operation.label] += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except FailureGroup as group:
                report = f"{case.operation.label}: {group}"
                if response.status_code >= 500:
                    server_errors.append(report)
                for failure in group.exceptions:
                    key = (case.operation.label, failure.title, response.status_code)
                    failures.setdefault(key, report)

        exercise()

    operations = [result.ok() for result in schema.get_all_operations()]
    with requests.Session() as session:
        for (headers, examples), operation in itertools.product(callers, operations):
            explore(session, operation, headers, examples)

    print(
        f"\nschemathesis: {sum(cases.values())} cases over {len(operations)} operations,"
        f" {len(server_errors)} server errors"
    )
    for label, title, status in sorted(failures):
        print(f"schemathesis: {label} answered {status}: {title}")
    assert not failures, "\n".join(failures.values())
    assert set(cases) == {op.label for op in operations}, "every operation was called"
    assert httpx.get(f"{base_url}/healthz").status_code == 200, "the hub still stands"


def test_a_time_out_of_range_is_refused_with_422_naming_the_parameter(running):
    """`since=99999999999999999999` once answered 500: SQLite's integers end at 2**63 - 1."""
    runner, token = running
    with api_client(runner, token) as api:
        for value, bound in (
            ("99999999999999999999", "less"),
            ("-99999999999999999999", "greater"),
        ):
            for name in ("since", "until"):
                answer = api.get("/api/alarms", params={name: value})
                assert answer.status_code == 422, answer.text
                (problem,) = answer.json()["detail"]
                assert problem["loc"] == ["query", name]
                assert problem["msg"].startswith(f"Input should be {bound} than or equal to")
        whole_range = api.get("/api/alarms", params={"since": 0, "until": EPOCH_MS_MAX})
        assert whole_range.status_code == 200 and whole_range.json() == []
        no_such_row = api.post("/api/troubles/99999999999999999999/close")
        assert no_such_row.status_code == 422
        assert no_such_row.json()["detail"][0]["loc"] == ["path", "trouble_id"]


def test_an_import_the_parsers_cannot_read_is_refused_and_changes_nothing(running):
    """A date that does not exist, or a CSV cell past the csv module's limit, once answered
    500; a CSV saved with the carriage returns of old spreadsheets could not be read."""
    runner, token = running
    before = runner.hub.registry.counts()
    with api_client(runner, token) as api:
        no_such_day = api.put("/api/registry", content="units:\n  - id: 2001-02-30\n")
        assert no_such_day.status_code == 422
        assert no_such_day.json()["problems"] == [
            "registry.yaml:2:9: error: invalid YAML: cannot read this value:"
            " day is out of range for month"
        ]
        huge_cell = api.put("/api/registry/households.csv", content="unit_id," + "x" * 200_000)
        assert huge_cell.status_code == 422
        assert huge_cell.json()["problems"] == [
            "households.csv:1: error: not readable as CSV: field larger than field limit (131072)"
        ]
        assert runner.hub.registry.counts() == before

        exported = api.get("/api/registry/households.csv").text
        moved = exported.replace("u-0001,h-10,1单元502室", "u-0001,h-10,1单元503室")
        moved = moved.replace("\n", "\r")
        old_mac = api.put("/api/registry/households.csv", content=moved)
        assert old_mac.status_code == 200, old_mac.text
        assert runner.hub.registry.household("u-0001", "h-10").address == "1单元503室"
        assert runner.hub.registry.counts() == before
