"""Intake: what panels send, checked, stored and answered.

Owns the path from a message on a panel's topic to its receipt: the topic and payload are
checked (signature, clock window, rate), the event is deduplicated by (panel, seq) and
stored in one transaction with everything it sets off, and only then is the receipt
published and the broker's delivery acknowledged. Nothing here decides what an alarm
means: that is `hub.alarms`.
"""
