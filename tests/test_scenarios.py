"""Every shipped scenario plays against a real hub process and meets its expectations; a
scenario that cannot hold makes `tenhub sim scenario` fail with a report saying why."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from simulator.scenario_model import Scenario, load_scenario
from simulator.scenario_runner import run_scenario
from tests.conftest import db_url_of

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "config" / "scenarios").glob("*.yaml"))


def _did(scenario: Scenario) -> list[str]:
    """What the scenario's steps do, in order."""
    return [step.action.rstrip("_") for step in scenario.steps]


def _cancels_with(scenario: Scenario, pin: str) -> bool:
    return any(step.cancel is not None and step.cancel.pin == pin for step in scenario.steps)


def _expects(scenario: Scenario, **what) -> bool:
    return any(all(getattr(e, k) == v for k, v in what.items()) for e in scenario.expect)


def _burglary_the_patrol_answers(s: Scenario) -> bool:
    raised = s.steps[0].raise_
    return (
        (raised is not None and raised.kind == "burglary")
        and s.responders["patrol"].answer != "never"
        and _expects(s, alarm=1, state="acknowledged")
    )


def _nobody_answers(s: Scenario) -> bool:
    return (
        set(_did(s)) == {"raise"}
        and all(r.answer == "never" for r in s.responders.values())
        and _expects(s, alarm=1, state="raised")
    )


def _a_panel_offline_and_back(s: Scenario) -> bool:
    did = _did(s)
    if "offline" not in did or "online" not in did[did.index("offline") :]:
        return False
    (gone,) = [step.offline.household for step in s.steps if step.offline is not None]
    return _expects(s, trouble=gone, kind="offline") and _expects(s, no_trouble=gone)


# The stories the README says `tenhub sim scenario` plays, in its words: the scenario
# file of each, and what makes that file play it.
STORIES: dict[str, tuple[str, Callable[[Scenario], bool]]] = {
    "a burglary the patrol answers": ("burglary-answered-by-patrol", _burglary_the_patrol_answers),
    "nobody answering": ("nobody-answers", _nobody_answers),
    "a false alarm": (
        "false-alarm-cancelled",
        lambda s: _cancels_with(s, "right") and _expects(s, alarm=1, state="cancelled"),
    ),
    "duress": (
        "duress",
        lambda s: _cancels_with(s, "duress") and _expects(s, alarm=1, duress=True),
    ),
    "a panel offline": ("panel-offline-and-back", _a_panel_offline_and_back),
    "the hub killed mid-escalation": (
        "hub-killed-mid-escalation",
        lambda s: _did(s) == ["raise", "hub_kill"] and _expects(s, lost=0),
    ),
    "the broker restarted during an alarm storm": (
        "broker-restart-during-storm",
        lambda s: _did(s) == ["storm", "broker_restart"] and _expects(s, lost=0),
    ),
}


def test_the_seven_stories_of_the_readme_are_shipped_as_scenarios_that_play_them():
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    for story, (name, plays) in STORIES.items():
        assert story in readme, f"the README no longer tells of {story!r}: update STORIES"
        scenario, _ = load_scenario(ROOT / "config" / "scenarios" / f"{name}.yaml")
        assert plays(scenario), f"{name}.yaml does not play {story!r}"


# The stories of what survives a crash or a broker's restart run on both databases; the
# others tell the same on SQLite (their stores run on both in the other tests).
ON_BOTH_DATABASES = {"hub-killed-mid-escalation", "broker-restart-during-storm"}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(
            p, id=p.stem, marks=[] if p.stem in ON_BOTH_DATABASES else [pytest.mark.one_database]
        )
        for p in SCENARIOS
    ],
)
async def test_a_shipped_scenario_meets_its_expectations(path, tmp_path, db_target):
    out = io.StringIO()
    report = await run_scenario(
        path, Console(file=out, width=200), workdir=tmp_path, db_url=db_url_of(db_target)
    )
    assert report.results, "a scenario that checks nothing proves nothing"
    assert report.passed, out.getvalue()


def tenhub(*args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    return subprocess.run(
        [sys.executable, "-m", "hub", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=clean,
        timeout=120,
    )


def test_a_scenario_that_cannot_hold_fails_with_a_report(tmp_path):
    scenario = tmp_path / "wishful.yaml"
    scenario.write_text(
        textwrap.dedent("""\
        name: Wishful thinking
        speed: 60
        units: [u-0001]
        steps:
          - {at: 0s, raise: {household: u-0001/h-01, kind: fire}}
        run_for: 30s
        expect:
          - {alarm: 1, buzzers: 9}
          - {alarm: 1, state: resolved}
          - {alarm: 1, not_notified: patrol}
    """)
    )
    result = tenhub("sim", "scenario", str(scenario))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "✓ alarm 1, buzzers: 9" in out
    assert "✗ alarm 1, state: resolved  → state raised" in out
    assert "✗ alarm 1, not_notified: patrol  → 2 patrol notifications" in out
    assert "FAILED: 1/3 expectations held" in out


def test_a_broken_scenario_file_is_refused_with_its_lines(tmp_path):
    scenario = tmp_path / "broken.yaml"
    scenario.write_text(
        textwrap.dedent("""\
        name: Broken
        steps:
          - {at: 5s, raise: {household: u-0001/h-01}, cancel: {alarm: 1}}
          - {at: 1s, explode: {}}
        expect:
          - {alarm: 1, state: sleeping}
    """)
    )
    result = tenhub("sim", "scenario", str(scenario))
    assert result.returncode == 2
    err = result.stderr
    assert f"{scenario}:3:" in err and "a step does one thing" in err
    assert f"{scenario}:4:" in err and "explode" in err
    assert f"{scenario}:6:" in err and "sleeping" in err
