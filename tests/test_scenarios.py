"""Every shipped scenario plays against a real hub process and meets its expectations; a
scenario that cannot hold makes `tenhub sim scenario` fail with a report saying why."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rich.console import Console

from simulator.scenario_runner import run_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "config" / "scenarios").glob("*.yaml"))


def test_the_seven_stories_are_shipped():
    names = {p.stem for p in SCENARIOS}
    assert {
        "burglary-answered-by-patrol", "nobody-answers", "false-alarm-cancelled", "duress",
        "panel-offline-and-back", "hub-killed-mid-escalation", "broker-restart-during-storm",
    } <= names


@pytest.mark.asyncio
@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
async def test_a_shipped_scenario_meets_its_expectations(path, tmp_path):
    out = io.StringIO()
    report = await run_scenario(path, Console(file=out, width=200), workdir=tmp_path)
    assert report.results, "a scenario that checks nothing proves nothing"
    assert report.passed, out.getvalue()


def tenhub(*args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    return subprocess.run(
        [sys.executable, "-m", "hub", *args], capture_output=True, text=True, cwd=ROOT,
        env=clean, timeout=120,
    )


def test_a_scenario_that_cannot_hold_fails_with_a_report(tmp_path):
    scenario = tmp_path / "wishful.yaml"
    scenario.write_text(textwrap.dedent("""\
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
    """))
    result = tenhub("sim", "scenario", str(scenario))
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "✓ alarm 1, buzzers: 9" in out
    assert "✗ alarm 1, state: resolved  → state raised" in out
    assert "✗ alarm 1, not_notified: patrol  → 2 patrol notifications" in out
    assert "FAILED: 1/3 expectations held" in out


def test_a_broken_scenario_file_is_refused_with_its_lines(tmp_path):
    scenario = tmp_path / "broken.yaml"
    scenario.write_text(textwrap.dedent("""\
        name: Broken
        steps:
          - {at: 5s, raise: {household: u-0001/h-01}, cancel: {alarm: 1}}
          - {at: 1s, explode: {}}
        expect:
          - {alarm: 1, state: sleeping}
    """))
    result = tenhub("sim", "scenario", str(scenario))
    assert result.returncode == 2
    err = result.stderr
    assert f"{scenario}:3:" in err and "a step does one thing" in err
    assert f"{scenario}:4:" in err and "explode" in err
    assert f"{scenario}:6:" in err and "sleeping" in err
