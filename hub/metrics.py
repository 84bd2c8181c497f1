"""The hub's Prometheus metrics, in a registry per hub so tests can run several hubs."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from hub.thread_cpu import ThreadCpuCollector

__all__ = ["CONTENT_TYPE_LATEST", "HubMetrics"]

# `_created` samples double every series and tell an operator nothing here.
disable_created_metrics()


class HubMetrics:
    """Counters of what came in and what went out."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "tenhub_events",
            "Panel events answered, by type and receipt status",
            ["type", "status"],
            registry=r,
        )
        self.rejected = Counter(
            "tenhub_rejected", "Messages refused, by reason", ["reason"], registry=r
        )
        self.unanswered = Counter(
            "tenhub_unanswered_messages",
            "Messages refused where no panel could be answered (bad topic, bad status)",
            ["reason"],
            registry=r,
        )
        self.receipt_latency = Histogram(
            "tenhub_receipt_latency_seconds",
            "From an event's arrival at the hub to its receipt being published",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        # The disk's part of every receipt: a slow disk shows here first.
        self.db_commit = Histogram(
            "tenhub_db_commit_seconds",
            "How long each database commit (its fsync) took; every receipt waits for one",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.status_messages = Counter(
            "tenhub_status_messages", "Panel status and heartbeat messages", ["topic"], registry=r
        )
        self.outbox_sent = Counter(
            "tenhub_outbox_sent", "Notifications sent, by channel", ["channel"], registry=r
        )
        self.outbox_errors = Counter(
            "tenhub_outbox_errors",
            "Failed notification attempts, by channel and outcome",
            ["channel", "outcome"],
            registry=r,
        )
        self.broker_connected = Gauge(
            "tenhub_broker_connected",
            "1 while the hub is connected to the MQTT broker",
            registry=r,
        )
        self.broker_connects = Counter(
            "tenhub_broker_connects", "Successful connections to the broker", registry=r
        )
        self.panels_online = Gauge(
            "tenhub_panels_online", "Panels whose last status said online", registry=r
        )
        # Which of the event loop and the database writer is full, when the hub is.
        r.register(ThreadCpuCollector())

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Current value of one sample (0 when it was never touched); for tests and the demo."""
        return self.registry.get_sample_value(name, labels) or 0.0
