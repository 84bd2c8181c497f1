"""The embedded MQTT broker (amqtt, in-process) used when no external broker is configured."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from amqtt.broker import Broker

logger = logging.getLogger(__name__)

# amqtt logs every connection and packet at INFO; the hub's own logs say what matters.
for _name in ("amqtt", "transitions"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class _SnapshotDict(dict):
    """A dict whose iteration walks a copy.

    amqtt iterates its subscription table with awaits inside the loop; a client that
    subscribes meanwhile changes the dict's size and kills the other client's connection
    ("dictionary changed size during iteration"), which a fleet connecting at once hits.
    """

    def __iter__(self):  # type: ignore[override]
        return iter(list(super().keys()))

    def keys(self):  # type: ignore[override]
        return list(super().keys())

    def items(self):  # type: ignore[override]
        return list(super().items())

    def values(self):  # type: ignore[override]
        return list(super().values())


class BrokerAddressInUse(RuntimeError):
    """The embedded broker's address is taken (often by another MQTT broker)."""


class EmbeddedBroker:
    """An amqtt broker listening on host:port inside the running event loop.

    Clients must give a username: amqtt keeps queued messages of persistent sessions
    only for clients that are not anonymous, and the hub relies on that queue.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False},
            },
        }

    def _check_address_free(self) -> None:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.host, self.port))
            except OSError as exc:
                raise BrokerAddressInUse(
                    f"cannot listen on {self.host}:{self.port} for the embedded broker"
                    f" ({exc.strerror});"
                    " set TENHUB_EMBEDDED_BROKER_ADDR to a free address, or TENHUB_BROKER_URL"
                    " to use the broker that is already there"
                ) from None

    async def start(self) -> None:
        """Start listening; raises BrokerAddressInUse when the port is taken."""
        self._check_address_free()
        self._broker = Broker(self._config())
        self._broker._subscriptions = _SnapshotDict()
        await self._broker.start()
        logger.info("embedded broker listening", extra={"addr": f"{self.host}:{self.port}"})

    async def stop(self) -> None:
        """Stop the broker and close every client connection."""
        if self._broker is not None:
            broker, self._broker = self._broker, None
            # No new connections, and the open ones cut, before amqtt's own shutdown: it
            # closes its listeners last, so a client reconnecting meanwhile (the hub retries
            # within 0.2 s) was taken and never cleaned up; and stopping a session can hang
            # on its reader, leaving that client connected to a broker that is gone.
            for server in broker._servers.values():
                if server.instance is not None:
                    server.instance.close()
            for transport in _client_transports(broker):
                transport.abort()
            try:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10):
                        await broker.shutdown()
            finally:
                # amqtt closes its listeners last, after every session: a session that
                # fails to clean up would leave the port taken, and the next start refused.
                for server in broker._servers.values():
                    if server.instance is not None:
                        server.instance.close()
                        with contextlib.suppress(Exception):
                            async with asyncio.timeout(5):
                                await server.instance.wait_closed()
            logger.info("embedded broker stopped")


def _client_transports(broker: Broker) -> list[asyncio.BaseTransport]:
    """The connections of the broker's sessions (amqtt has no public way to cut them)."""
    found = []
    for _session, handler in list(broker._sessions.values()):
        stream = getattr(getattr(handler, "writer", None), "_writer", None)
        transport = getattr(stream, "transport", None)
        if transport is not None and not transport.is_closing():
            found.append(transport)
    return found
