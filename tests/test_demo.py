"""`tenhub demo` as a newcomer meets it: one full loop of every story, told on the console,
the rate limit met only where the storm story says so, and what the desk does on the web
shown on the console too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.waiting import ProcessOutput

ROOT = Path(__file__).resolve().parent.parent
STORIES = (
    "Duress",
    "Panel offline",
    "False alarm",
    "The patrol answers",
    "Nobody answers",
    "Alarm storm",
)
HELD = "held back by the per-phone rate limit"


def _desk_acknowledges(web: str, password: str, alarm_id: str) -> None:
    with httpx.Client(base_url=web, timeout=10) as desk:
        form = desk.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)[1]
        done = desk.post(
            "/login",
            data={"username": "desk", "password": password, "csrf_token": csrf},
            headers={"Origin": web},
        )
        assert done.status_code == 303, done.text
        page = desk.get("/desk")
        token = re.search(r'name="csrf-token" content="([^"]+)"', page.text)[1]
        taken = desk.post(
            f"/api/alarms/{alarm_id}/acknowledge",
            headers={"X-CSRF-Token": token, "Origin": web},
        )
        assert taken.status_code == 200, taken.text


def test_one_loop_tells_every_story_and_meets_the_limit_only_in_the_storm(tmp_path):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TENHUB_", "TWILIO_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "demo", "--loops", "1", "--every", "3",
         "--http-addr", "127.0.0.1:0"],
        cwd=ROOT, env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    stdout, stderr = ProcessOutput(proc.stdout), ProcessOutput(proc.stderr)
    try:
        opened = stdout.wait_for("nobody answers: the ladder climbs", timeout=90)
        head = stdout.text()
        web = re.search(r"web: (http://\S+)", head)[1]
        password = re.search(r"password (\S+)", head)[1]
        alarm_id = re.search(r"/alarms/(a-[0-9a-z]+)", opened)[1]
        _desk_acknowledges(web, password, alarm_id)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = stdout.text(), stderr.text()
    assert proc.returncode == 0, out + err
    assert "Traceback" not in err, err

    for title in STORIES:
        assert f"STORY     {title}:" in out, title
    assert "DURESS    the panel answers accepted, as for a cancel" in out
    assert re.search(r"OFFLINE   p-\S+ .*Last Will", out)
    assert re.search(r"ONLINE    p-\S+ has power again", out)
    assert f"WEB       desk on the web: acknowledged {alarm_id}" in out
    assert "loop 1 done" in out

    # Stories are separated by blank lines; only the storm's may meet the limit, and it does.
    stories = {
        m[1]: block for block in out.split("\n\n") if (m := re.search(r"STORY +([^:]+):", block))
    }
    storm = stories["Alarm storm"]
    assert re.search(rf"\b[1-9]\d* {HELD}", storm), storm
    assert "LIMIT     on purpose" in storm
    for title in STORIES[:-1]:
        assert HELD not in stories[title], stories[title]
    assert "1 alarms" not in out and "1 key households" not in out  # plurals
