"""Registry: who lives where, and how to reach them.

Owns the model of districts, units, households, key households, patrol teams, desks and
commands, read from and written to YAML and CSV, with every problem reported the way
`tenhub check-config` shows it, and the household PINs, kept only as salted hashes.
"""
