"""The hub's memory of recently stored panel events: bounded, oldest forgotten first."""

from __future__ import annotations

from hub.alarms.alarm_store import StoredEvent
from hub.intake.stored_events import RecentEvents


def stored(panel_id: str, seq: int) -> StoredEvent:
    return StoredEvent(
        panel_id=panel_id,
        seq=seq,
        type="alarm",
        payload=f'{{"seq":{seq}}}',
        alarm_id=f"a-{panel_id}-{seq}",
        status="accepted",
        error=None,
        received_at=seq,
    )


def test_recent_events_are_found_by_panel_and_seq_and_the_oldest_go_first():
    recent = RecentEvents(size=2)
    recent.add(stored("p-0001-01", 1))
    recent.add(stored("p-0001-02", 1))
    assert recent.get("p-0001-01", 1).alarm_id == "a-p-0001-01-1"
    assert recent.get("p-0001-01", 2) is None, "another seq of the same panel"

    recent.add(stored("p-0001-01", 2))

    assert len(recent) == 2
    assert recent.get("p-0001-01", 1) is None, "the oldest is forgotten: the database answers"
    assert recent.get("p-0001-02", 1) is not None and recent.get("p-0001-01", 2) is not None
