"""Broker: the hub's MQTT connection and the brokers it runs with.

Owns the hub's one MQTT session (paho's public API; an event is acknowledged to the
broker only once it is committed), the embedded broker of `tenhub demo`, the panels'
broker credentials, and the Mosquitto configuration, password and ACL files the hub
writes for a production broker.
"""
