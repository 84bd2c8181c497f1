"""Alarms: their lifecycle, the escalation ladder, and who is told what.

Owns the rules of an alarm (raised, acknowledged, on scene, cancelled with a PIN, duress,
resolved), the policies and their ladders, the recipients of each step, the words of
every message, and the stores those rules write in one unit of work: alarms and their
timelines, panel troubles, contacts and reply codes, and the outbox from which `alerts`
sends. Every change to an alarm goes through here.
"""
