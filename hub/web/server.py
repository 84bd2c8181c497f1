"""uvicorn's server as tenhub embeds it: the program that runs it owns SIGINT and SIGTERM."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import uvicorn


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves the signals alone; its owner stops it (`should_exit`).

    uvicorn's own handlers took Ctrl-C and SIGTERM for the web server alone: it stopped
    first, ahead of the owner's orderly shutdown (answers to the last SMS refused), and
    the owner heard of the signal only once it had stopped, which an open live stream
    put off for good.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
