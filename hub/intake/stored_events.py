"""The panel events most recently stored, kept in memory to answer a panel's repeats."""

from __future__ import annotations

from hub.alarms.alarm_store import StoredEvent


class RecentEvents:
    """The last `size` panel events the database holds, by panel and seq; oldest out first.

    Only what a commit wrote (or the database returned) goes in, and a stored event never
    changes: what is found here is what the database would say, without asking its writer.
    """

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self._events: dict[tuple[str, int], StoredEvent] = {}

    def __len__(self) -> int:
        return len(self._events)

    def get(self, panel_id: str, seq: int) -> StoredEvent | None:
        """The stored event with this panel and seq, if it is among the recent ones."""
        return self._events.get((panel_id, seq))

    def add(self, event: StoredEvent) -> None:
        """Remember a stored event, forgetting the oldest beyond `size`."""
        self._events[(event.panel_id, event.seq)] = event
        if len(self._events) > self.size:
            del self._events[next(iter(self._events))]
