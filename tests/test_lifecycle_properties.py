"""Random sequences of events and clock moves against the lifecycle and the ladder.

Whatever happens, in whatever order: no step fires after its `unless` was reached, no step
fires twice, no due step is forgotten, the timeline only grows and in order, and an
alarm's state only moves forward along the lifecycle.
"""

from __future__ import annotations

import contextlib
import json

import sqlalchemy as sa
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

from devices.protocol import AlarmKind
from hub.alarms import lifecycle
from hub.alarms.escalation import escalate_now, fire_due_steps
from hub.alarms.policy import DEFAULT_POLICIES, LIFECYCLE, Policy
from hub.alarms.work import AlarmContext, LifecycleRules, Refused, Responder, Work
from hub.registry.model import load_registry
from hub.storage.db import create_engine
from tests.conftest import EXAMPLE_REGISTRY

REGISTRY = load_registry(EXAMPLE_REGISTRY)
PLACES = [REGISTRY.panel_place(h.panel) for u in REGISTRY.units for h in u.households]
ROLES = ["neighbors", "key_households", "patrol", "police", "command"]
ORDER = [*LIFECYCLE, "cancelled"]


class AlarmLifecycle(RuleBasedStateMachine):
    alarms = Bundle("alarms")

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__()
        # Each run in one transaction rolled back at its end: the next starts empty.
        self.conn = engine.connect()
        self.run = self.conn.begin()
        self.context = AlarmContext(
            REGISTRY, DEFAULT_POLICIES, LifecycleRules(cancel_window_ms=120_000)
        )
        self.now = 1_800_000_000_000
        self.seen_timeline: dict[int, tuple] = {}
        self.places: dict[str, object] = {}

    def teardown(self) -> None:
        self.run.rollback()
        self.conn.close()

    def _tx(self, action) -> None:
        # A savepoint, as the hub's writer gives each write.
        # A refusal keeps what it recorded (a wrong PIN), like the hub does.
        with self.conn.begin_nested(), contextlib.suppress(Refused):
            action(Work.begin(self.conn, self.context, self.now))

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

    def _rows(self, sql):
        return self.conn.execute(sa.text(sql)).mappings().all()

    def _timelines(self) -> dict[str, list]:
        """Each alarm's timeline, oldest entry first (one query: they run after every step)."""
        timelines: dict[str, list] = {}
        for r in self._rows("SELECT * FROM alarm_timeline ORDER BY id"):
            timelines.setdefault(r["alarm_id"], []).append(r)
        return timelines

    @invariant()
    def timeline_only_grows_and_in_order(self):
        rows = self._rows(
            "SELECT id, alarm_id, at, entry, state, actor, detail FROM alarm_timeline"
        )
        current = {r["id"]: tuple(r.values()) for r in rows}
        for entry_id, row in self.seen_timeline.items():
            assert current.get(entry_id) == row, "a timeline entry was changed or removed"
        self.seen_timeline = current
        last_at: dict[str, int] = {}
        for r in sorted(rows, key=lambda r: r["id"]):
            assert r["at"] >= last_at.get(r["alarm_id"], 0), "timeline out of order"
            last_at[r["alarm_id"]] = r["at"]

    @invariant()
    def states_only_move_forward(self):
        timelines = self._timelines()
        for alarm in self._rows("SELECT id, state FROM alarms"):
            states = [r["state"] for r in timelines.get(alarm["id"], [])]
            ranks = [ORDER.index(s) for s in states]
            assert ranks == sorted(ranks), f"state went backwards: {states}"
            if "cancelled" in states:
                assert "on_scene" not in states and "resolved" not in states
            assert states[-1] == alarm["state"]

    @invariant()
    def no_step_fires_twice_or_after_its_unless(self):
        timelines = self._timelines()
        for alarm in self._rows("SELECT id, ladder FROM alarms"):
            policy = Policy.from_json(alarm["ladder"])
            fired: list[int] = []
            state, acked_by = "raised", set()
            for e in timelines.get(alarm["id"], []):
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
        recorded: dict[str, set[int]] = {}
        for r in self._rows("SELECT alarm_id, step FROM alarm_steps"):
            recorded.setdefault(r["alarm_id"], set()).add(r["step"])
        for alarm in self._rows("SELECT id, raised_at, ladder FROM alarms"):
            policy = Policy.from_json(alarm["ladder"])
            for index, step in enumerate(policy.steps):
                if alarm["raised_at"] + step.after_ms <= self.now:
                    assert index in recorded.get(alarm["id"], set()), (
                        f"step {index} due but neither fired nor skipped"
                    )


def test_the_lifecycle_holds_whatever_happens_in_whatever_order(db_target, db_kind):
    # The rules are the same on both databases; on PostgreSQL, where each of the thousands
    # of queries of a run is a round trip to the server, fewer runs check that its SQL
    # keeps them alike.
    examples = 60 if db_kind == "sqlite" else 20
    engine = create_engine(db_target)
    try:
        run_state_machine_as_test(
            lambda: AlarmLifecycle(engine),
            settings=settings(max_examples=examples, stateful_step_count=30, deadline=None),
        )
    finally:
        engine.dispose()
