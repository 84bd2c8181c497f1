"""The embedded MQTT broker (amqtt, in-process) used when no external broker is configured.

The listening socket is the hub's own (amqtt's `external` listener): the hub accepts each
connection and hands its streams to the broker, so on stop it can refuse new connections
first and cut the open ones, which amqtt does only last, or not at all when a session hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker

logger = logging.getLogger(__name__)

# amqtt logs every connection and packet at INFO; the hub's own logs say what matters.
for _name in ("amqtt", "transitions"):
    logging.getLogger(_name).setLevel(logging.WARNING)


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
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict:
        return {
            # `bind` only registers the listener: the hub's own server listens there.
            "listeners": {"default": {"type": "external", "bind": f"{self.host}:{self.port}"}},
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
        broker = Broker(self._config())
        await broker.start()
        self._broker = broker
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        logger.info("embedded broker listening", extra={"addr": f"{self.host}:{self.port}"})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        broker = self._broker
        if broker is None:
            writer.transport.abort()
            return
        self._clients.add(writer)
        try:
            await broker.external_connected(
                StreamReaderAdapter(reader), StreamWriterAdapter(writer), "default"
            )
        except Exception as exc:
            # amqtt walks its subscription table across awaits when a client connects:
            # another client subscribing meanwhile ends this one's connection with
            # "dictionary changed size during iteration". It connects again.
            logger.warning("embedded broker dropped a connection", extra={"error": repr(exc)})
        finally:
            self._clients.discard(writer)
            writer.transport.abort()

    async def stop(self) -> None:
        """Stop the broker and close every client connection."""
        broker, self._broker = self._broker, None
        server, self._server = self._server, None
        if server is not None:
            # No new connections, and the open ones cut, before amqtt's own shutdown: a
            # client reconnecting meanwhile (the hub retries within 0.2 s) was taken and
            # never cleaned up; and stopping a session can hang on its reader, leaving
            # that client connected to a broker that is gone.
            server.close()
            for writer in list(self._clients):
                writer.transport.abort()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await server.wait_closed()
        if broker is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    await broker.shutdown()
            logger.info("embedded broker stopped")
