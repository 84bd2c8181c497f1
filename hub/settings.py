"""Hub settings: a TOML file (`--config`), every key overridable by an environment variable."""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from hub.clock import Clock, ScaledClock, SystemClock
from hub.i18n.catalogues import DEFAULT_LANGUAGE, available_languages, language_tag
from hub.problems import ConfigError, Problem
from hub.storage.db import database_url

# Keys whose variable is not TENHUB_<KEY>: Twilio's own names, kept as operators know them.
_ENV_NAMES = {
    "twilio_account_sid": "TWILIO_ACCOUNT_SID",
    "twilio_auth_token": "TWILIO_AUTH_TOKEN",
    "twilio_from": "TWILIO_FROM",
}

Seconds = Annotated[float, Field(gt=0)]


class Settings(BaseModel):
    """Everything the hub can be told; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker_url: str | None = None  # None: start the embedded broker
    # PEM file of the CAs an mqtts:// broker's certificate may come from (None: the system's).
    broker_ca_file: str | None = None
    embedded_broker_addr: str = "127.0.0.1:1883"
    hub_client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")] = "tenhub-hub"
    # The SQLite file, and the folder beside which the hub keeps its key files (the PIN
    # key, the VAPID key) whichever database it uses.
    db_path: str = "tenhub.db"
    # A PostgreSQL database (postgresql://user:password@host:port/dbname) instead of
    # the SQLite file.
    db_url: str | None = None
    registry: str | None = None
    policy: str | None = None
    http_addr: str = "127.0.0.1:8080"
    public_url: str | None = None
    # Where the hub receives SIA DC-09 alarm panels, over TCP and UDP (`0.0.0.0:9000`);
    # unset: no DC-09 receiver.
    dc09_addr: str | None = None
    # Proxies (addresses or networks) whose X-Forwarded-For names the client; none: the
    # client is the peer of the connection, and no client can choose its own address.
    forwarded_allow_ips: tuple[str, ...] = ()
    # The bearer token a scraper of /metrics presents from anywhere but this machine;
    # unset, only loopback clients may read /metrics.
    metrics_token: Annotated[str, Field(min_length=16)] | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_from: str | None = None
    twilio_api_base: str | None = None
    twilio_timeout_s: Seconds = 10.0  # no answer after this: the send's outcome is unknown
    vapid_key_file: str | None = None  # None: next to the database
    vapid_subject: str = "mailto:operator@tenhub.invalid"
    heartbeat_s: Seconds = 30.0
    # A panel silent this long is offline; unset: three heartbeats.
    offline_after_s: Annotated[float, Field(ge=20)] | None = None
    # At most this many messages per recipient phone in any 15 minutes (0: no limit).
    sms_per_15min: Annotated[int, Field(ge=0)] = 5
    calls_per_15min: Annotated[int, Field(ge=0)] = 3
    pushes_per_15min: Annotated[int, Field(ge=0)] = 20
    cancel_window_s: Seconds = 120.0
    max_wrong_pins: Annotated[int, Field(ge=1, le=100)] = 5
    max_payload_bytes: Annotated[int, Field(ge=256, le=262_144)] = 4096
    # Simulations only: hub time runs this many times faster, from clock_epoch_ms.
    clock_speed: Annotated[float, Field(ge=1, le=3600)] = 1.0
    clock_epoch_ms: int | None = None
    log_level: str = "info"
    log_format: str = "text"
    # The desk's map: an XYZ tile server (`https://tiles.example.org/{z}/{x}/{y}.png`; the
    # city's own, say) and the credit its tiles require; unset, the desk draws a sketch.
    map_tile_url: str | None = None
    map_tile_attribution: str = ""
    map_max_zoom: Annotated[int, Field(ge=1, le=22)] = 19
    # The language of whoever the registry gives none (a tag with a catalogue: en, zh-CN),
    # and the time zone of the times in messages (an IANA name).
    language: str = DEFAULT_LANGUAGE
    timezone: str = "Asia/Shanghai"

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, v: str | None) -> str | None:
        if v:
            BrokerAddress.parse(v)
        return v or None

    @field_validator("broker_ca_file")
    @classmethod
    def _check_ca_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        if not v:
            return None
        url = info.data.get("broker_url")  # absent when it failed its own check
        if not url or not BrokerAddress.parse(url).tls:
            raise ValueError("only an mqtts:// broker_url uses a CA file")
        try:
            ssl.create_default_context(cafile=v)
        except FileNotFoundError:
            raise ValueError(f"{v}: no such file") from None
        except ssl.SSLError:  # an OSError too: first
            raise ValueError(f"{v}: not a PEM file of CA certificates") from None
        except OSError as exc:
            raise ValueError(f"{v}: {exc.strerror or exc}") from None
        return v

    @field_validator("db_url")
    @classmethod
    def _check_db_url(cls, v: str | None) -> str | None:
        if v:
            database_url(v)
        return v or None

    @field_validator("embedded_broker_addr", "http_addr")
    @classmethod
    def _check_addr(cls, v: str) -> str:
        parse_host_port(v)
        return v

    @field_validator("dc09_addr")
    @classmethod
    def _check_dc09_addr(cls, v: str | None) -> str | None:
        if v:
            parse_host_port(v)
        return v or None

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _check_proxies(cls, v: Any) -> Any:
        if isinstance(v, str):  # the environment's form: comma-separated
            v = v.split(",")
        if not isinstance(v, list | tuple) or not all(isinstance(i, str) for i in v):
            return v  # pydantic says what is wrong with it
        v = [item.strip() for item in v if item.strip()]
        for item in v:
            # Read as uvicorn reads them: anything but an address or a network would be
            # compared as plain text and silently never match a client.
            try:
                if "/" in item:
                    ipaddress.ip_network(item)
                else:
                    ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address or network (like 10.0.0.5 or 10.0.0.0/24)"
                ) from None
        return v

    @field_validator("map_tile_url")
    @classmethod
    def _check_tile_url(cls, v: str | None) -> str | None:
        if not v:
            return None
        parts = urlsplit(v.replace("{", "").replace("}", ""))
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"{v!r} is not an http(s) URL")
        missing = [p for p in ("{z}", "{x}", "{y}") if p not in v]
        if missing:
            raise ValueError(
                f"a tile URL template needs {', '.join(missing)} (like .../{{z}}/{{x}}/{{y}}.png)"
            )
        return v

    @property
    def map_tile_origin(self) -> str | None:
        """Where the desk's browsers fetch tiles from (scheme://host[:port]), or None."""
        if not self.map_tile_url:
            return None
        parts = urlsplit(self.map_tile_url)
        # `{s}.tiles.example.org` spreads tiles over subdomains: allow them all.
        return f"{parts.scheme}://{parts.netloc.replace('{s}', '*')}"

    @field_validator("language")
    @classmethod
    def _check_language(cls, v: str) -> str:
        tag = language_tag(v)
        if tag is None:
            raise ValueError(
                f"unknown language {v!r}: use one of {', '.join(available_languages())}"
            )
        return tag

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r}: use an IANA name like Asia/Shanghai"
            ) from None
        return v

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        if v.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("log_level must be one of debug, info, warning, error")
        return v.lower()

    @field_validator("log_format")
    @classmethod
    def _check_format(cls, v: str) -> str:
        if v not in {"text", "json"}:
            raise ValueError("log_format must be text or json")
        return v

    @property
    def offline_after_ms(self) -> int:
        return int((self.offline_after_s or max(20.0, 3 * self.heartbeat_s)) * 1000)

    def clock(self) -> Clock:
        """The hub's clock: the wall clock, or a faster one for simulations."""
        if self.clock_speed == 1.0:
            return SystemClock()
        return ScaledClock(self.clock_speed, self.clock_epoch_ms or SystemClock().now_ms())

    def database(self) -> str:
        """The database to open: db_url if set, else the SQLite file db_path."""
        return self.db_url or self.db_path

    def broker(self) -> BrokerAddress | None:
        """The external broker, or None for the embedded one."""
        if not self.broker_url:
            return None
        return replace(BrokerAddress.parse(self.broker_url), ca_file=self.broker_ca_file)


def env_name(key: str) -> str:
    """The environment variable that overrides a settings key."""
    return _ENV_NAMES.get(key, f"TENHUB_{key.upper()}")


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is and how to log in: `mqtt://user:pass@host:port` (or mqtts://)."""

    host: str
    port: int
    username: str | None
    password: str | None
    tls: bool
    ca_file: str | None = None  # with tls: the CAs to trust instead of the system's

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "mqtts", "tcp"}:
            raise ValueError(f"broker URL must start with mqtt:// or mqtts://, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"broker URL {url!r} has an invalid port") from None
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=tls,
        )

    def display(self) -> str:
        """The URL without its password, for logs."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_host_port(value: str) -> tuple[str, int]:
    """`host:port` → (host, port); raises ValueError with a readable message."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port (like 127.0.0.1:8080)")
    return host.strip("[]"), int(port)


def load_settings(
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from the TOML file, then the environment, then explicit overrides.

    Relative paths in the file are relative to the file; in the environment, to the
    working directory. Raises ConfigError listing every problem.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}  # where each value came from, to point at it in errors
    text = ""
    file_name = str(config_path) if config_path else "settings"
    if config_path is not None:
        path = Path(config_path)
        try:
            text = path.read_text(encoding="utf-8")
            values = tomllib.loads(text)
        except OSError as exc:
            raise ConfigError(
                [Problem(file_name, None, None, "", f"cannot read config file: {exc.strerror}")]
            ) from None
        except tomllib.TOMLDecodeError as exc:
            problem = Problem(file_name, None, None, "", f"invalid TOML: {exc}")
            raise ConfigError([problem]) from None
        origin = dict.fromkeys(values, "file")
        for key in ("db_path", "registry", "policy", "vapid_key_file", "broker_ca_file"):
            if isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
                values[key] = str(path.parent / values[key])
    for key in Settings.model_fields:
        name = env_name(key)
        if env.get(name):
            values[key] = env[name]
            origin[key] = "env"
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
            origin[key] = "option"
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            key = str(err["loc"][0]) if err["loc"] else ""
            came_from = origin.get(key, "file")
            line = _line_of_key(text, key) if came_from == "file" else None
            where = {"env": f"${env_name(key)}", "option": f"--{key.replace('_', '-')}"}.get(
                came_from, file_name
            )
            message = (
                f"unknown key {key!r} (allowed: {', '.join(Settings.model_fields)})"
                if err["type"] == "extra_forbidden"
                else err["msg"].removeprefix("Value error, ")
            )
            problems.append(Problem(where, line, 1 if line else None, key, message))
        raise ConfigError(problems) from None


def _line_of_key(text: str, key: str) -> int | None:
    if not text or not key:
        return None
    match = re.search(rf"^\s*{re.escape(key)}\s*=", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None
