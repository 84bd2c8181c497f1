"""Real MQTT brokers for tests (the simulator's own runners)."""

from simulator.brokers import (
    EmbeddedBrokerThread,
    Mosquitto,
    free_port,
    mosquitto_available,
    wait_for_port,
)

__all__ = ["EmbeddedBrokerThread", "Mosquitto", "free_port", "mosquitto_available",
           "wait_for_port"]
