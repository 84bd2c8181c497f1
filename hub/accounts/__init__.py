"""Accounts: the people who log in to the web, and how they are kept out when they should be.

Owns users with their roles and zones, their API tokens, the `tenhub user`
commands, and the throttle that slows a password guesser without locking out the
account's owner.
"""
