"""`python -m hub` is the `tenhub` command."""

from hub.cli import main

main()
