"""Panels: whether each panel is alive, and provisioning them.

Owns presence (heartbeats kept in memory and written in batches), supervision (a panel
gone silent opens an offline trouble once, and closes it when it is back) and the
`tenhub panel` commands that provision a panel's broker account and keys.
"""
