"""Random sequences of events and clock moves against the lifecycle and the ladder.

Whatever happens, in whatever order: no step fires after its `unless` was reached, no step
fires twice, no due step is forgotten, the timeline only grows and in order, and an
alarm's state only moves forward along the lifecycle.
"""

from __future__ import annotations

import json
import sqlite3

import sqlite_utils
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from devices.protocol import AlarmKind
from hub import lifecycle
from hub.escalation import escalate_now, fire_due_steps
from hub.migrations import MIGRATIONS, apply_migrations
from hub.policy import DEFAULT_POLICIES, LIFECYCLE, Policy
from hub.registry import load_registry
from hub.work import AlarmContext, LifecycleRules, Refused, Responder, Work
from tests.conftest import EXAMPLE_REGISTRY

REGISTRY = load_registry(EXAMPLE_REGISTRY)
PLACES = [REGISTRY.panel_place(h.panel) for u in REGISTRY.units for h in u.households]
ROLES = ["neighbors", "key_households", "patrol", "police", "command"]
ORDER = [*LIFECYCLE, "cancelled"]


class AlarmLifecycle(RuleBasedStateMachine):
    alarms = Bundle("alarms")

    def __init__(self) -> None:
        super().__init__()
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.row_factory = sqlite3.Row
        apply_migrations(conn, MIGRATIONS)
        self.conn = conn
        self.db = sqlite_utils.Database(conn)
        self.context = AlarmContext(
            REGISTRY, DEFAULT_POLICIES, LifecycleRules(cancel_window_ms=120_000)
        )
        self.now = 1_800_000_000_000
        self.seen_timeline: dict[int, tuple] = {}
        self.places: dict[str, object] = {}

    def _tx(self, action) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            action(Work.begin(self.db, self.context, self.now))
        except Refused:
            pass  # a refusal keeps what it recorded (a wrong PIN), like the hub does
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _alarm(self, w: Work, alarm_id: str):
        return lifecycle.get_alarm(w, alarm_id)

    @rule(target=alarms, place=st.sampled_from(PLACES), kind=st.sampled_from(list(AlarmKind)))
    def raise_alarm(self, place, kind):
        made = []
        self._tx(lambda w: made.append(lifecycle.raise_alarm(w, place, kind.value, self.now, 1)))
        self.places[made[0].id] = place
        return made[0].id

    @rule(alarm_id=alarms, role=st.sampled_from(ROLES))
    def acknowledge(self, alarm_id, role):
        responder = Responder(f"test:{role}", role)
        self._tx(lambda w: lifecycle.acknowledge(w, self._alarm(w, alarm_id), responder, "test"))

    @rule(alarm_id=alarms, role=st.sampled_from(["patrol", "police"]))
    def on_scene(self, alarm_id, role):
        responder = Responder(f"test:{role}", role)
        self._tx(lambda w: lifecycle.mark_on_scene(w, self._alarm(w, alarm_id), responder, "web"))

    @rule(alarm_id=alarms)
    def resolve(self, alarm_id):
        responder = Responder("test:police", "police")
        self._tx(lambda w: lifecycle.resolve(w, self._alarm(w, alarm_id), responder, "web", "done"))

    @rule(alarm_id=alarms, which=st.sampled_from(["right", "wrong", "duress"]))
    def cancel(self, alarm_id, which):
        place = self.places[alarm_id]
        household = place.household
        pin = {"right": household.pin, "wrong": "0000", "duress": household.duress_pin}[which]
        if pin is None:
            pin = "0000"
        self._tx(lambda w: lifecycle.cancel_with_pin(w, self._alarm(w, alarm_id), place, pin))

    @rule(alarm_id=alarms)
    def escalate_now(self, alarm_id):
        responder = Responder("test:police", "police")
        self._tx(lambda w: escalate_now(w, self._alarm(w, alarm_id), responder, "web"))

    @rule(seconds=st.integers(min_value=0, max_value=4000))
    def time_passes(self, seconds):
        self.now += seconds * 1000
        self._tx(lambda w: fire_due_steps(w, limit=10_000))

    # --- what must always hold ---------------------------------------------------------

    def _rows(self, sql, *params):
        return self.conn.execute(sql, params).fetchall()

    @invariant()
    def timeline_only_grows_and_in_order(self):
        rows = self._rows(
            "SELECT id, alarm_id, at, entry, state, actor, detail FROM alarm_timeline"
        )
        current = {r["id"]: tuple(r) for r in rows}
        for entry_id, row in self.seen_timeline.items():
            assert current.get(entry_id) == row, "a timeline entry was changed or removed"
        self.seen_timeline = current
        last_at: dict[str, int] = {}
        for r in sorted(rows, key=lambda r: r["id"]):
            assert r["at"] >= last_at.get(r["alarm_id"], 0), "timeline out of order"
            last_at[r["alarm_id"]] = r["at"]

    @invariant()
    def states_only_move_forward(self):
        for alarm in self._rows("SELECT id, state FROM alarms"):
            states = [
                r["state"]
                for r in self._rows(
                    "SELECT state FROM alarm_timeline WHERE alarm_id = ? ORDER BY id", alarm["id"]
                )
            ]
            ranks = [ORDER.index(s) for s in states]
            assert ranks == sorted(ranks), f"state went backwards: {states}"
            if "cancelled" in states:
                assert "on_scene" not in states and "resolved" not in states
            assert states[-1] == alarm["state"]

    @invariant()
    def no_step_fires_twice_or_after_its_unless(self):
        for alarm in self._rows("SELECT id, ladder FROM alarms"):
            policy = Policy.from_json(alarm["ladder"])
            entries = self._rows(
                "SELECT entry, state, detail FROM alarm_timeline WHERE alarm_id = ? ORDER BY id",
                alarm["id"],
            )
            fired: list[int] = []
            state, acked_by = "raised", set()
            for e in entries:
                detail = json.loads(e["detail"]) if e["detail"] else {}
                if e["entry"] == "step_fired":
                    fired.append(detail["step"])
                    step = policy.steps[detail["step"]]
                    if not detail.get("forced"):
                        assert state not in ("resolved", "cancelled")
                        assert step.unless is None or not step.unless.is_met(state, acked_by), (
                            f"step {detail['name']} fired with the alarm {state}, "
                            f"acknowledged by {acked_by}"
                        )
                elif e["entry"] == "acknowledged":
                    acked_by.add(detail["role"])
                state = e["state"]
            assert len(fired) == len(set(fired)), f"a step fired twice: {fired}"

    @invariant()
    def no_due_step_is_forgotten(self):
        for alarm in self._rows("SELECT id, raised_at, ladder FROM alarms"):
            policy = Policy.from_json(alarm["ladder"])
            recorded = {
                r["step"]
                for r in self._rows("SELECT step FROM alarm_steps WHERE alarm_id = ?", alarm["id"])
            }
            for index, step in enumerate(policy.steps):
                if alarm["raised_at"] + step.after_ms <= self.now:
                    assert index in recorded, f"step {index} due but neither fired nor skipped"


AlarmLifecycle.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestAlarmLifecycle = AlarmLifecycle.TestCase
