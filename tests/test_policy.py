"""Escalation policies: the shipped ladders, the file format, every mistake at its line."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.alarms.policy import (
    DEFAULT_POLICIES,
    Policy,
    PolicySet,
    Step,
    Unless,
    format_duration,
    parse_duration,
)
from hub.alarms.policy_file import load_policies, parse_policies
from hub.problems import ConfigError
from tests.conftest import EXAMPLE_REGISTRY
from tests.test_cli import tenhub

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "policy.example.yaml"

# A default policy that is fine, appended so that the policy under test can be broken alone.
DEFAULT = """\
  default:
    steps:
      - {after: 0s, notify: [neighbors, patrol, police]}
"""


def check(snippet: str, *, default: bool = True) -> tuple[PolicySet | None, str]:
    """Parse a YAML snippet; returns the policies and the problems as the operator reads them."""
    body = textwrap.indent(textwrap.dedent(snippet), "  ")
    text = "policies:\n" + body + (DEFAULT if default else "")
    policies, problems = parse_policies(text, "policy.yaml")
    return policies, "\n".join(problem.format() for problem in problems)


# --- the shipped policies ------------------------------------------------------------------


def test_the_example_file_is_exactly_the_built_in_policies() -> None:
    policies, problems = parse_policies(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert problems == []
    assert policies == DEFAULT_POLICIES
    assert load_policies(EXAMPLE) == DEFAULT_POLICIES


def test_the_default_ladder_meets_the_response_targets() -> None:
    default = DEFAULT_POLICIES["default"]
    assert [(format_duration(s.after_ms), s.name, s.notify) for s in default.steps] == [
        ("0s", "first alert", ("neighbors", "key_households", "patrol")),
        ("1m", "police", ("police",)),
        ("5m", "police handling", ("police", "command")),
        ("15m", "support", ("command",)),
        ("30m", "containment", ("command",)),
        ("2h", "region-wide", ("command",)),
    ]
    assert [s.unless for s in default.steps] == [
        None,
        Unless(state="acknowledged", by=frozenset({"key_households", "patrol", "police"})),
        Unless(state="on_scene"),
        Unless(state="resolved"),
        Unless(state="resolved"),
        Unless(state="resolved"),
    ]
    assert default.police_step() == 1


@pytest.mark.parametrize("kind", ["panic", "fire", "gas"])
def test_lives_at_risk_tell_the_police_at_once(kind: str) -> None:
    policy = DEFAULT_POLICIES.for_kind(kind)
    assert policy.name == kind
    assert policy.steps[0].after_ms == 0 and "police" in policy.steps[0].notify
    assert policy.police_step() == 0
    assert policy.steps[1:] == DEFAULT_POLICIES["default"].steps[2:]


def test_kinds_without_a_policy_follow_the_default() -> None:
    assert DEFAULT_POLICIES.for_kind("burglary") is DEFAULT_POLICIES["default"]
    assert DEFAULT_POLICIES.for_kind("medical").steps == DEFAULT_POLICIES["default"].steps


def test_a_policy_set_needs_a_default_and_known_names() -> None:
    fire = DEFAULT_POLICIES["fire"]
    with pytest.raises(ValueError, match="no 'default' policy"):
        PolicySet({"fire": fire})
    with pytest.raises(ValueError, match="unknown policy name 'flood'"):
        PolicySet({"default": DEFAULT_POLICIES["default"], "flood": fire})
    with pytest.raises(ValueError, match="filed under 'panic'"):
        PolicySet({"default": DEFAULT_POLICIES["default"], "panic": fire})


def test_policies_cannot_be_changed_in_place() -> None:
    with pytest.raises(TypeError):
        DEFAULT_POLICIES.policies["burglary"] = DEFAULT_POLICIES["fire"]  # type: ignore[index]
    with pytest.raises(ValueError):
        DEFAULT_POLICIES["default"].steps[0].after_ms = 5  # type: ignore[misc]


def test_step_label_is_its_name_or_its_number() -> None:
    assert DEFAULT_POLICIES["default"].steps[2].label(2) == "police handling"
    assert Step(after_ms=0, notify=("police",)).label(3) == "step 4"


# --- snapshots -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "panic", "fire", "gas", "medical"])
def test_json_snapshot_round_trips(name: str) -> None:
    policy = DEFAULT_POLICIES[name]
    snapshot = policy.to_json()
    assert Policy.from_json(snapshot) == policy
    assert Policy.from_json(snapshot).to_json() == snapshot


def test_json_snapshot_is_compact_and_stable() -> None:
    snapshot = DEFAULT_POLICIES["default"].to_json()
    assert " " not in snapshot.replace("first alert", "").replace("police handling", "")
    assert "null" not in snapshot
    # Roles of `by` in a fixed order, whatever the set's order in this process.
    assert '"by":["key_households","patrol","police"]' in snapshot


def test_a_snapshot_is_checked_like_a_file() -> None:
    with pytest.raises(ValueError, match="no step notifies police"):
        Policy.from_json('{"name":"default","steps":[{"after_ms":0,"notify":["patrol"]}]}')


# --- unless --------------------------------------------------------------------------------


def test_unless_counts_the_state_and_every_later_one() -> None:
    unless = Unless(state="on_scene")
    states = ("raised", "acknowledged", "on_scene", "resolved")
    assert [unless.is_met(state) for state in states] == [False, False, True, True]
    assert unless.is_met("cancelled")


def test_unless_by_counts_only_acknowledgements_of_those_roles() -> None:
    unless = Unless(state="acknowledged", by=frozenset({"patrol", "police"}))
    assert not unless.is_met("raised")
    assert not unless.is_met("acknowledged", {"neighbors"})
    assert unless.is_met("acknowledged", {"neighbors", "patrol"})
    assert unless.is_met("on_scene")  # whoever got there


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms", "shown"),
    [
        ("0s", 0, "0s"),
        ("90s", 90_000, "1m30s"),
        ("5m", 300_000, "5m"),
        ("2h", 7_200_000, "2h"),
        ("1h30m", 5_400_000, "1h30m"),
        ("500ms", 500, "500ms"),
        ("1s500ms", 1_500, "1s500ms"),
    ],
)
def test_durations(text: str, ms: int, shown: str) -> None:
    assert parse_duration(text) == ms
    assert format_duration(ms) == shown


@given(st.integers(min_value=0, max_value=10**12))
def test_format_duration_reads_back(ms: int) -> None:
    assert parse_duration(format_duration(ms)) == ms


@pytest.mark.parametrize("text", ["", "1.5m", "5 m", "-5s", "30s5m", "1d", "m", "5min"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration: write whole numbers"):
        parse_duration(text)


def test_a_bare_number_is_refused_for_its_missing_unit() -> None:
    with pytest.raises(ValueError, match="90 has no unit: write 90s"):
        parse_duration("90")


# --- mistakes in a file, each at its line --------------------------------------------------


def test_unknown_role_lists_the_roles() -> None:
    policies, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: [neighbours, police]}
        """
    )
    assert policies is None
    assert text == (
        "policy.yaml:4:30: error: policies.fire.steps[0].notify[0]: unknown role 'neighbours': "
        "the roles are neighbors, key_households, patrol, police, command"
    )


def test_unknown_unless_states_are_explained() -> None:
    _, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: [police]}
              - {after: 1m, unless: raised, notify: [command]}
              - {after: 2m, unless: cancelled, notify: [command]}
              - {after: 3m, unless: {state: closed}, notify: [command]}
        """
    )
    assert text.splitlines() == [
        "policy.yaml:5:29: error: policies.fire.steps[1].unless: 'raised' cannot be an unless "
        "state: every alarm starts raised; use one of acknowledged, on_scene, resolved",
        "policy.yaml:6:29: error: policies.fire.steps[2].unless: 'cancelled' needs no unless: "
        "a cancelled alarm stops every step; use one of acknowledged, on_scene, resolved",
        "policy.yaml:7:37: error: policies.fire.steps[3].unless.state: unknown state 'closed'; "
        "use one of acknowledged, on_scene, resolved",
    ]


def test_by_goes_with_acknowledged_only() -> None:
    policies, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: [police]}
              - {after: 1m, unless: {state: acknowledged, by: [patrol]}, notify: [command]}
              - {after: 2m, unless: {state: on_scene, by: [patrol]}, notify: [command]}
              - {after: 3m, unless: {state: acknowledged, by: []}, notify: [command]}
        """
    )
    assert policies is None
    assert text.splitlines() == [
        "policy.yaml:6:51: error: policies.fire.steps[2].unless.by: 'by' only goes with state "
        "acknowledged: it names whose acknowledgement counts, "
        "and an alarm is on_scene whoever reported it",
        "policy.yaml:7:55: error: policies.fire.steps[3].unless.by: "
        "must not be empty: list at least one entry",
    ]


def test_steps_out_of_order_name_the_step_before() -> None:
    _, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: [patrol]}
              - {after: 5m, notify: [police]}
              - {after: 5m, notify: [command]}
              - {after: 90s, notify: [command]}
        """
    )
    assert text == (
        "policy.yaml:7:17: error: policies.fire.steps[3].after: steps out of order: "
        "after 1m30s is earlier than after 5m of step 3 (line 6); "
        "list the steps in the order they fire"
    )


def test_bad_durations() -> None:
    _, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: [police]}
              - {after: 90, notify: [command]}
              - {after: 1.5m, notify: [command]}
              - {after: soon, notify: [command]}
              - {notify: [command]}
        """
    )
    assert text.splitlines() == [
        "policy.yaml:5:17: error: policies.fire.steps[1].after: "
        "90 has no unit: write 90s (or use ms, m or h)",
        "policy.yaml:6:17: error: policies.fire.steps[2].after: '1.5m' is not a duration: "
        "write whole numbers with the units h, m, s or ms, largest first, like 90s, 5m or 1h30m",
        "policy.yaml:7:17: error: policies.fire.steps[3].after: 'soon' is not a duration: "
        "write whole numbers with the units h, m, s or ms, largest first, like 90s, 5m or 1h30m",
        "policy.yaml:8:9: error: policies.fire.steps[4].after: missing required key 'after'",
    ]


def test_policy_names_are_default_or_alarm_kinds() -> None:
    _, text = check(
        """\
          flood:
            steps:
              - {after: 0s, notify: [police]}
        """
    )
    assert text == (
        "policy.yaml:2:3: error: policies.flood: unknown policy name 'flood': name a policy "
        "'default' or after an alarm kind (panic, burglary, fire, medical, gas)"
    )


def test_a_default_policy_is_required() -> None:
    policies, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: [police]}
        """,
        default=False,
    )
    assert policies is None
    assert text == (
        "policy.yaml:1:1: error: policies: there is no 'default' policy: "
        "alarms of a kind without a policy of their own follow it"
    )


def test_empty_steps_and_empty_notify() -> None:
    _, text = check(
        """\
          fire:
            steps: []
          gas:
            steps:
              - {after: 0s, notify: []}
        """
    )
    assert text.splitlines() == [
        "policy.yaml:3:12: error: policies.fire.steps: must not be empty: list at least one entry",
        "policy.yaml:5:5: error: policies.gas.steps: no step notifies police: a duress PIN "
        "sends an alarm straight to its police step, so every policy needs one",
        "policy.yaml:6:29: error: policies.gas.steps[0].notify: "
        "must not be empty: list at least one entry",
    ]


def test_a_role_twice_in_one_step() -> None:
    _, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: [police, patrol, police]}
        """
    )
    assert text == (
        "policy.yaml:4:46: error: policies.fire.steps[0].notify[2]: "
        "'police' is listed twice: name each role once in a step"
    )


def test_every_policy_needs_a_police_step() -> None:
    _, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: [neighbors, patrol]}
              - {after: 5m, unless: resolved, notify: [command]}
        """
    )
    assert text == (
        "policy.yaml:3:5: error: policies.fire.steps: no step notifies police: a duress PIN "
        "sends an alarm straight to its police step, so every policy needs one"
    )


def test_a_policy_named_twice() -> None:
    _, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: [police]}
          fire:
            steps:
              - {after: 0s, notify: [patrol, police]}
        """
    )
    assert text == (
        "policy.yaml:5:3: error: policies.fire: duplicate key 'fire' (first used at line 2)"
    )


def test_unknown_keys_list_the_allowed_ones() -> None:
    _, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: [police], when: always}
            note: fires first
        """
    )
    assert text.splitlines() == [
        "policy.yaml:4:39: error: policies.fire.steps[0].when: "
        "unknown key 'when' (allowed: after, notify, unless, name)",
        "policy.yaml:5:5: error: policies.fire.note: unknown key 'note' (allowed: steps)",
    ]


def test_a_plain_word_where_a_list_belongs() -> None:
    _, text = check(
        """\
          fire:
            steps:
              - {after: 0s, notify: police}
        """
    )
    assert text == (
        "policy.yaml:4:29: error: policies.fire.steps[0].notify: "
        "expected a list, got the text 'police': write [police]"
    )


def test_every_mistake_is_reported_in_one_run() -> None:
    _, text = check(
        """\
          fire:
            steps:
              - {after: 1m, notify: [polce]}
              - {after: 30s, notify: [patrol]}
        """
    )
    assert [line.split(": ")[0] for line in text.splitlines()] == [
        "policy.yaml:3:5",  # no step notifies police (the typo)
        "policy.yaml:4:17",  # the first step is not at 0s (a warning)
        "policy.yaml:4:30",  # unknown role
        "policy.yaml:5:17",  # out of order
    ]


# --- warnings ------------------------------------------------------------------------------


def test_a_late_first_step_is_a_warning_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snippet = """\
      fire:
        steps:
          - {after: 30s, notify: [patrol, police]}
    """
    policies, text = check(snippet)
    assert policies is not None
    assert text == (
        "policy.yaml:4:17: warning: policies.fire.steps[0].after: the first step fires after "
        "30s: nobody is alerted until then; start the ladder with a step after 0s"
    )
    path = tmp_path / "policy.yaml"
    body = textwrap.indent(textwrap.dedent(snippet), "  ")
    path.write_text("policies:\n" + body + DEFAULT, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="hub.alarms.policy_file"):
        assert load_policies(path).for_kind("fire").steps[0].after_ms == 30_000
    assert "the first step fires after 30s" in caplog.text


# --- the file itself -----------------------------------------------------------------------


def test_yaml_syntax_error_and_empty_file() -> None:
    _, text = check("  fire: [\n", default=False)
    assert text.startswith("policy.yaml:3:1: error: invalid YAML: ")
    policies, problems = parse_policies("# nothing yet\n", "policy.yaml")
    assert policies is None
    assert [p.format() for p in problems] == [
        "policy.yaml: error: the policy file is empty: "
        "it needs 'policies' with at least a 'default' one"
    ]


def test_the_top_level_key_is_policies() -> None:
    _, problems = parse_policies("policy:\n  default: {}\n", "policy.yaml")
    assert [p.format() for p in problems] == [
        "policy.yaml:1:1: error: policies: missing required key 'policies'",
        "policy.yaml:1:1: error: policy: unknown key 'policy' (allowed: policies)",
    ]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    with pytest.raises(ConfigError) as caught:
        load_policies(path)
    assert str(caught.value) == f"{path}: error: policy file not found"


# --- check-config --------------------------------------------------------------------------


def test_check_config_accepts_the_example_policies() -> None:
    result = tenhub("check-config", "--registry", str(EXAMPLE_REGISTRY), "--policy", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert (
        f"{EXAMPLE}: OK: 5 policies (default, panic, fire, gas, medical), "
        "default ladder 0s → 1m → 5m → 15m → 30m → 2h"
    ) in result.stdout


def test_check_config_without_a_policy_names_the_built_in_ladder() -> None:
    result = tenhub("check-config", "--registry", str(EXAMPLE_REGISTRY))
    assert result.returncode == 0, result.stderr
    assert "policy: built-in default ladder 0s → 1m → 5m → 15m → 30m → 2h" in result.stdout


def test_check_config_shows_policy_mistakes_at_their_lines(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        textwrap.dedent(
            """\
            policies:
              default:
                steps:
                  - {after: 0s, notify: [neighbors, patrol]}
                  - {after: 60, notify: [police]}
              fire:
                steps:
                  - {after: 0s, notify: [police, firemen]}
            """
        ),
        encoding="utf-8",
    )
    result = tenhub("check-config", "--registry", str(EXAMPLE_REGISTRY), "--policy", str(bad))
    assert result.returncode == 1
    assert "OK: 3 units" in result.stdout  # the registry is still checked and fine
    err = result.stderr
    assert f"{bad}:5:17: error: policies.default.steps[1].after: 60 has no unit" in err
    assert f"{bad}:8:38: error: policies.fire.steps[0].notify[1]: unknown role 'firemen'" in err
    assert f"{bad}: 2 errors, 0 warnings" in err


def test_check_config_reports_every_bad_file_in_one_run(tmp_path: Path) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text("units: []\nunits: []\n", encoding="utf-8")
    policy = tmp_path / "policy.yaml"
    policy.write_text("policies:\n  fire:\n    steps: []\n", encoding="utf-8")
    env = {"TENHUB_REGISTRY": str(registry), "TENHUB_POLICY": str(policy)}
    result = tenhub("check-config", env=env)
    assert result.returncode == 1
    assert f"{registry}:2:1: error: units: duplicate key 'units'" in result.stderr
    assert f"{policy}:1:1: error: policies: there is no 'default' policy" in result.stderr
    assert f"{policy}:3:12: error: policies.fire.steps: must not be empty" in result.stderr
