"""Shared fixtures: real brokers on free ports, and a database of each kind."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import EmbeddedBrokerThread, Mosquitto
from tests.postgres import PostgresServer

DB_KINDS = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        choices=[*DB_KINDS, "both"],
        default="both",
        help="which database the stories that store data run on (default: both)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that touches the database, directly or through a hub, runs once per kind.
    if "db_kind" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--db")
        # Module scope: a module's fixtures that outlive one test (a hub shared by its
        # stories) can depend on it; pytest runs a module's stories kind by kind.
        metafunc.parametrize("db_kind", DB_KINDS if chosen == "both" else [chosen], scope="module")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Which broker and which database are independent of each other: a story runs on
    # both brokers with SQLite, and on PostgreSQL with Mosquitto, not four times.
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        params = params.params if params else {}
        pair = (params.get("broker"), params.get("db_kind"))
        # A story marked one_database shows something the database does not change (the
        # HTTP contract, the rules' answers): SQLite tells as much as both would.
        once = item.get_closest_marker("one_database") is not None
        twice_over = pair == ("embedded", "postgresql") or (once and pair[1] == "postgresql")
        (drop if twice_over else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the whole session, started the first time a test needs it."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the newest schema, copied for each test (faster than migrating)."""
    from hub.storage.db import create_engine
    from hub.storage.migrations import upgrade

    path = tmp_path_factory.mktemp("template") / "tenhub.db"
    engine = create_engine(path)
    with engine.connect() as conn:
        upgrade(conn)
    engine.dispose()  # the WAL is copied back into the file as the last connection closes
    return path


@pytest.fixture
def db_target(db_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's own database, at the newest schema: a SQLite file's path or a PostgreSQL URL.

    Give it to `Database(...)`, or to a hub as TENHUB_DB_URL / db_url when it is a URL.
    """
    if db_kind == "sqlite":
        path = tmp_path / "tenhub.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield str(path)
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def empty_db_target(db_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Like `db_target`, but an empty database: no schema yet."""
    if db_kind == "sqlite":
        yield str(tmp_path / "empty.db")
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database(migrated=False)
    yield url
    server.drop_database(url)


@pytest.fixture(scope="module")
def module_db_url(db_kind: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """For a hub shared by a module's stories: the db_url of a fresh PostgreSQL database,
    or None (SQLite: the hub creates its file where its db_path says)."""
    if db_kind == "sqlite":
        yield None
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.new_database()
    yield url
    server.drop_database(url)


def db_url_of(target: str) -> str | None:
    """The db_url setting for a `db_target`: the URL, or None for a SQLite file."""
    return target if "://" in target else None


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free port, persistence on; stopped after the test."""
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBrokerThread]:
    """The embedded (amqtt) broker on a free port, in its own thread."""
    broker = EmbeddedBrokerThread()
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(params=["mosquitto", "embedded"])
def broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Mosquitto | EmbeddedBrokerThread]:
    """Each story runs once against Mosquitto and once against the embedded broker."""
    if request.param == "mosquitto":
        b: Mosquitto | EmbeddedBrokerThread = Mosquitto(tmp_path / "mosquitto")
    else:
        b = EmbeddedBrokerThread()
    b.start()
    yield b
    b.stop()


# ---------------------------------------------------------------------------------------
# A hub in the test's event loop, and reference panels from the example registry.

EXAMPLE_REGISTRY = Path(__file__).resolve().parent.parent / "config" / "registry.example.yaml"


@pytest.fixture(scope="session")
def registry():
    from hub.registry.model import load_registry

    return load_registry(EXAMPLE_REGISTRY)


class HubRunner:
    """Starts and stops hubs on one database and broker, as an operator would."""

    def __init__(
        self, broker_url: str, db_path: Path, registry, db_url: str | None = None, **settings
    ) -> None:
        self.broker_url = broker_url
        self.db_path = db_path  # the SQLite file, or where key files go beside PostgreSQL
        self.db_url = db_url
        self.registry = registry
        self.settings = settings
        self.hub = None
        self._task: asyncio.Task | None = None

    async def start(self, **overrides):
        from hub.app import Hub
        from hub.settings import Settings

        settings = Settings(
            broker_url=self.broker_url,
            db_path=str(self.db_path),
            db_url=self.db_url,
            http_addr="127.0.0.1:0",
            hub_client_id="tenhub-test-hub",
            **{**self.settings, **overrides},
        )
        self.hub = Hub(settings, self.registry, **({"clock": self.clock} if self.clock else {}))
        self._task = asyncio.create_task(self.hub.run())
        started = asyncio.create_task(self.hub.started.wait())
        await asyncio.wait([self._task, started], return_when=asyncio.FIRST_COMPLETED, timeout=10)
        if self._task.done():
            self._task.result()
        async with asyncio.timeout(10):
            await self.hub.transport.connected.wait()
        return self.hub

    clock = None

    async def stop(self) -> None:
        if self.hub is not None and self._task is not None:
            self.hub.stop()
            async with asyncio.timeout(15):
                await self._task
        self.hub = self._task = None

    @property
    def database(self) -> str:
        """What the hub stores in: the PostgreSQL URL, or the SQLite file."""
        return self.db_url or str(self.db_path)


@pytest.fixture
async def hub_runner(broker, tmp_path: Path, registry, db_target: str):
    """A hub runner on the story's broker and database, fresh for the test."""
    url = broker.url.replace("mqtt://", "mqtt://tenhub-test-hub@")
    runner = HubRunner(url, tmp_path / "tenhub.db", registry, db_url=db_url_of(db_target))
    yield runner
    await runner.stop()


@pytest.fixture
async def hub(hub_runner):
    """A running hub."""
    return await hub_runner.start()


@pytest.fixture
def panels(broker, tmp_path: Path, registry):
    """`panels("p-0001-01", ...)` starts reference panels of the example registry."""
    from devices.panel import ReferencePanel

    started: list[ReferencePanel] = []

    def make(*panel_ids: str, **options) -> list[ReferencePanel]:
        made = []
        for panel_id in panel_ids:
            place = registry.panel_place(panel_id)
            panel = ReferencePanel(
                panel_id,
                broker.host,
                broker.port,
                state_dir=tmp_path / "panels",
                username=panel_id,
                household_id=place.household.id if place else None,
                unit_id=place.unit.id if place else None,
                **{"retry_initial_s": 0.5, **options},
            )
            panel.start()
            started.append(panel)
            made.append(panel)
        return made

    yield make
    for panel in started:
        with contextlib.suppress(Exception):
            panel.stop()


async def first_step_recorded(hub, alarm_id: str, timeout: float = 5.0) -> None:
    """Wait until the alarm's first ladder step is recorded (fired or skipped).

    The receipt answers as soon as the alarm is stored; the escalation engine fires the
    first step in the transaction right after.
    """
    async with asyncio.timeout(timeout):
        while not await hub.alarms.steps(alarm_id):  # noqa: ASYNC110 - a database row, no event
            await asyncio.sleep(0.01)
