"""Each person gets their alarm in their own language: a Chinese-speaking key household,
patrol member and desk get SMS and calls in Chinese, English-speaking ones in English, a
reply of 收到 acknowledges and is answered in Chinese — through the real hub, the real
twilio client and the local gateway. And the catalogues hold every text the code speaks.
"""

from __future__ import annotations

import asyncio
import functools
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from pydantic import ValidationError

from alerts.twilio_channels import TwilioSettings, twilio_client
from devices.protocol import ReceiptStatus
from hub.clock import ManualClock
from hub.i18n import available_languages, sms_length
from hub.registry.model import Registry, parse_registry
from hub.settings import Settings
from hub.web.twilio_hooks import parse_reply
from simulator.twilio_gateway import TwilioGateway
from tests.conftest import HubRunner, db_url_of, first_step_recorded

ROOT = Path(__file__).resolve().parent.parent
HUB_NUMBER = "+15550001000"
ZH_KEY_HOUSEHOLD = "+15550000101"  # u-0001/h-01, key household of u-0001: reads Chinese
EN_NEIGHBOUR = "+15550000103"  # u-0001/h-03: the deployment's language, English
ZH_PATROL, EN_PATROL = "+15550009001", "+15550009002"
ZH_DESK = "+15550009911"
PLACE = "湖北省武汉市硚口区宝丰街道宝丰花园小区2栋"


def bilingual(registry: Registry) -> Registry:
    """The example registry, with Chinese for one household, one patrol member and a desk."""
    data = registry.model_dump(mode="json", exclude_none=True)
    data["units"][0]["households"][0]["language"] = "zh-CN"
    data["patrols"][0]["members"][0]["language"] = "zh-CN"
    data["police_desks"][0]["language"] = "zh_cn"  # as an operator might write it
    return Registry.model_validate(data)


@pytest.fixture
def gateway():
    gw = TwilioGateway(phone_number=HUB_NUMBER, callback_delay_s=0.01)
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
async def hub(mosquitto, tmp_path, registry, gateway, db_target):
    runner = HubRunner(
        mosquitto.url.replace("mqtt://", "mqtt://tenhub-hub@"),
        tmp_path / "hub.db",
        bilingual(registry),
        db_url=db_url_of(db_target),
        twilio_account_sid=gateway.account_sid,
        twilio_auth_token=gateway.auth_token,
        twilio_from=HUB_NUMBER,
        twilio_api_base=gateway.base_url,
        twilio_timeout_s=1.0,
    )
    runner.clock = ManualClock()
    yield await runner.start()
    await runner.stop()


@pytest.fixture
def panel(mosquitto, tmp_path, registry):
    from devices.panel import ReferencePanel

    made = []

    def make(panel_id):
        place = registry.panel_place(panel_id)
        p = ReferencePanel(
            panel_id,
            mosquitto.host,
            mosquitto.port,
            state_dir=tmp_path / "panels",
            username=panel_id,
            household_id=place.household.id,
            unit_id=place.unit.id,
            retry_initial_s=0.5,
        )
        p.start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


async def raise_alarm(hub, panel) -> str:
    receipt = await asyncio.to_thread(panel.raise_alarm("burglary").wait, 5)
    assert receipt is not None and receipt.status == ReceiptStatus.ACCEPTED
    await first_step_recorded(hub, receipt.alarm_id)
    return receipt.alarm_id


async def sms_to(gateway, phone, count=1):
    return await asyncio.to_thread(
        functools.partial(gateway.store.wait_for_messages, count, phone, 15.0, strict=True)
    )


async def segments_recorded(gateway, sid: str) -> str:
    """The message's segment count as the gateway recorded it, read with the twilio client."""
    settings = TwilioSettings(
        gateway.account_sid, gateway.auth_token, HUB_NUMBER, api_base=gateway.base_url
    )
    message = await asyncio.to_thread(lambda: twilio_client(settings).messages(sid).fetch())
    return message.num_segments


async def shanghai_time(hub, alarm_id: str) -> str:
    raised_at = (await hub.alarms.get(alarm_id)).raised_at
    return datetime.fromtimestamp(raised_at / 1000, ZoneInfo("Asia/Shanghai")).strftime("%H:%M")


async def test_each_person_reads_the_alarm_in_their_language_and_收到_acknowledges(
    hub, gateway, panel
):
    alarm_id = await raise_alarm(hub, panel("p-0001-02"))
    since = await shanghai_time(hub, alarm_id)

    (to_key,) = await sms_to(gateway, ZH_KEY_HOUSEHOLD)
    (to_zh_patrol,) = await sms_to(gateway, ZH_PATROL)
    (to_en_patrol,) = await sms_to(gateway, EN_PATROL)
    (to_neighbour,) = await sms_to(gateway, EN_NEIGHBOUR)
    chinese = (
        f"【tenhub】入室盗窃：{PLACE}1单元102室（u-0001/h-02），{since} 起。"
        f"升级：首次通知。警情 {alarm_id}。回复 1 确认。"
    )
    assert to_key.body == chinese and to_zh_patrol.body == chinese
    assert sms_length(chinese).encoding == "UCS-2"
    assert await segments_recorded(gateway, to_key.sid) == "2"

    # English readers get English; the Chinese address makes it UCS-2 too, cut to fit.
    for english in (to_en_patrol.body, to_neighbour.body):
        assert english.startswith("tenhub BURGLARY at ")
        assert f"2栋, 1单元102室 since {since}. Escalation: first alert." in english
        assert english.endswith("Reply 1 to acknowledge.")
    assert await segments_recorded(gateway, to_en_patrol.sid) == "2"

    url = f"{hub.public_url}/twilio/sms"
    puzzled = await gateway.reply_async(ZH_PATROL, "你是谁？", url)
    assert "未能识别。请回复报警短信中的数字（例如 3）" in puzzled.text
    wrong = await gateway.reply_async(EN_PATROL, "收到 7", url)
    assert "Nothing to acknowledge: no alarm 7. Nothing was changed." in wrong.text
    assert (await hub.alarms.get(alarm_id)).state == "raised"

    answer = await gateway.reply_async(ZH_PATROL, "收到", url)
    assert answer.status_code == 200
    assert f"谢谢：您已确认{PLACE}1单元102室（入室盗窃）的警情。" in answer.text
    assert (await hub.alarms.get(alarm_id)).state == "acknowledged"
    acked = [e for e in await hub.alarms.timeline(alarm_id) if e.entry == "acknowledged"]
    assert (acked[0].actor, acked[0].channel) == (f"phone:{ZH_PATROL}", "sms")


async def test_a_chinese_desk_gets_its_sms_and_call_in_chinese_and_presses_1(hub, gateway, panel):
    alarm_id = await raise_alarm(hub, panel("p-0001-03"))
    await sms_to(gateway, ZH_PATROL)
    hub.clock.advance(61)
    await hub.engine.run_once()
    await hub.sender.run_once()

    (to_desk,) = await sms_to(gateway, ZH_DESK)
    since = await shanghai_time(hub, alarm_id)
    assert to_desk.body == (
        f"【tenhub】入室盗窃：{PLACE}1单元201室（u-0001/h-03），{since} 起。"
        f"升级：通知民警。警情 {alarm_id}。回复 1 确认。"
    )
    assert await segments_recorded(gateway, to_desk.sid) == "2"

    (call,) = await asyncio.to_thread(
        functools.partial(gateway.store.wait_for_calls, 1, ZH_DESK, 15.0, strict=True)
    )
    assert '<Say language="zh-CN">【ten hub】入室盗窃：' in call.twiml
    assert '<Say language="zh-CN">确认请按 1。</Say></Gather>' in call.twiml
    assert '<Say language="zh-CN">未按键，警情仍未处理。再见。</Say>' in call.twiml

    pressed = await gateway.press_async(call.sid, "1")
    assert pressed.status_code == 200
    assert '<Say language="zh-CN">已确认，谢谢。</Say>' in pressed.text
    assert (await hub.alarms.get(alarm_id)).state == "acknowledged"


@pytest.mark.parametrize(
    ("body", "meaning"),
    [
        ("收到", "latest"),
        ("确认", "latest"),
        ("好", "latest"),
        (" 好的！", "latest"),
        ("收到。", "latest"),
        ("ack", "latest"),
        ("ACK", "latest"),
        ("1", 1),
        ("收到 3", 3),
        ("确认3", 3),
        ("ACK 4821", 4821),
        ("你好", None),
        ("不好", None),
    ],
)
def test_replies_in_chinese_or_english_acknowledge(body, meaning):
    assert parse_reply(body) == meaning


# --- the catalogues ------------------------------------------------------------------------


def _texts_in_code() -> set[str]:
    """Every text the code marks for translation, as `pybabel extract -F babel.cfg` finds it."""
    with (ROOT / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT), method_map, options_map
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_text_in_the_code_is_in_both_catalogues_translated_and_none_is_unused():
    in_code = _texts_in_code()
    assert len(in_code) >= 30 and "Reply %(code)s to acknowledge." in in_code
    with (ROOT / "hub" / "i18n" / "messages.pot").open("rb") as pot:
        assert {m.id for m in read_po(pot) if m.id} == in_code, "run pybabel extract"
    assert available_languages() == ("en", "zh-CN")
    for folder in ("en", "zh_CN"):
        with (ROOT / "hub" / "i18n" / folder / "LC_MESSAGES" / "messages.po").open("rb") as po:
            catalog = read_po(po, locale=folder)
        ids = {m.id for m in catalog if m.id}
        assert in_code - ids == set(), f"{folder}: missing from the catalogue"
        assert ids - in_code == set(), f"{folder}: no longer used by the code"
        untranslated = [m.id for m in catalog if m.id and (not m.string or m.fuzzy)]
        assert untranslated == [], f"{folder}: not translated"
        assert [(m.id, errors) for m, errors in catalog.check()] == [], f"{folder}: placeholders"
        assert not list(catalog.obsolete), f"{folder}: obsolete entries"


# --- where a language is set ---------------------------------------------------------------


def test_the_language_and_time_zone_settings_are_checked():
    assert Settings().language == "en" and Settings().timezone == "Asia/Shanghai"
    assert Settings(language="zh_cn").language == "zh-CN"
    with pytest.raises(ValidationError, match="unknown language 'fr': use one of en, zh-CN"):
        Settings(language="fr")
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        Settings(timezone="Mars/Olympus")


REGISTRY_WITH_LANGUAGES = """\
units:
  - id: u-1
    name: "湖北省武汉市硚口区宝丰街道宝丰花园小区2栋"
    zone: z-1
    households:
      - {id: h-1, address: "1单元101室", panel: p-1, phones: ["+8613800138001"], language: zh-CN}
      - {id: h-2, address: "1单元102室", panel: p-2, phones: ["+8613800138002"], language: %s}
patrols:
  - id: t-1
    zone: z-1
    members: [{name: "巡逻一队 张伟", phone: "+8613900139001", language: zh-CN}]
police_desks:
  - {id: d-1, zones: [z-1], phone: "+862783000110", language: en}
command:
  - {id: c-1, phone: "+862783000119", language: zh-CN}
"""


def test_check_config_refuses_a_language_without_a_catalogue(tmp_path):
    registry, problems = parse_registry(REGISTRY_WITH_LANGUAGES % "zh-CN", "registry.yaml")
    assert problems == [] and registry is not None
    assert registry.language_of_phone("+8613800138002") == "zh-CN"
    assert registry.language_of_phone("+862783000110") == "en"

    bad = tmp_path / "registry.yaml"
    bad.write_text(REGISTRY_WITH_LANGUAGES % "klingon", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "hub", "check-config", "--registry", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode != 0
    assert (
        "registry.yaml:7:89: error: units[0].households[1].language: unknown language"
        " 'klingon': use one of en, zh-CN" in result.stdout + result.stderr
    )
