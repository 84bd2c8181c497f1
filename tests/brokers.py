"""Real MQTT brokers for tests (the simulator's own runners)."""

from simulator.brokers import (
    EmbeddedBrokerThread,
    Mosquitto,
    MosquittoProcess,
    free_port,
    mosquitto_available,
    wait_for_port,
)

__all__ = [
    "EmbeddedBrokerThread",
    "Mosquitto",
    "MosquittoProcess",
    "free_port",
    "mosquitto_available",
    "wait_for_port",
]
