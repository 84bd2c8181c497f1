"""SMS segments as phones and carriers count them, and every alarm SMS in two of them:
for the longest address of the example registry, in English and in Chinese, at every step
and under duress, and for an address no SMS could hold."""

from __future__ import annotations

import re

import pytest

from hub.alarms.alarm_store import Alarm
from hub.alarms.messages import MAX_SEGMENTS, sms_text
from hub.alarms.policy import DEFAULT_POLICIES
from hub.alarms.recipients import alarm_notice
from hub.i18n import SmsLength, sms_length, translator
from hub.registry.model import Registry

RAISED_AT = 1_765_000_000_000  # 13:46 in Shanghai
ALARM_ID = "a-01kbs35cg0dwmts91a87ztsnqz"  # as long as every alarm id


def test_gsm7_takes_160_alone_and_153_a_part():
    assert sms_length("a" * 160) == SmsLength("GSM-7", 160, 1)
    assert sms_length("a" * 161).segments == 2
    assert sms_length("a" * 306).segments == 2
    assert sms_length("a" * 307).segments == 3
    assert sms_length("").segments == 1


def test_the_extension_table_takes_two_septets_and_is_never_split():
    assert sms_length("€" * 80) == SmsLength("GSM-7", 160, 1)
    assert sms_length("€" * 81).segments == 2
    # 152 septets, then an escape pair that does not fit in the first part's last septet.
    assert sms_length("a" * 152 + "€" + "a" * 152).segments == 3  # 306 septets
    assert sms_length("a" * 151 + "€" + "a" * 151).segments == 2


def test_one_chinese_character_makes_it_ucs2_70_alone_and_67_a_part():
    assert sms_length("中" * 70) == SmsLength("UCS-2", 70, 1)
    assert sms_length("中" * 71).segments == 2
    assert sms_length("中" * 134).segments == 2
    assert sms_length("中" * 135).segments == 3
    assert sms_length("a" * 69 + "…").encoding == "UCS-2"
    # A character past the BMP is two UTF-16 units, kept in one part.
    assert sms_length("😀" * 35).segments == 1
    assert sms_length("中" * 66 + "😀" + "中" * 66).segments == 3


def _longest(registry: Registry):
    return max(
        ((u, h) for u in registry.units for h in u.households),
        key=lambda place: len(place[0].name) + len(place[1].address),
    )


def _alarm(unit_id: str, household_id: str, kind: str) -> Alarm:
    return Alarm(ALARM_ID, unit_id, household_id, "p-x", kind, "raised", RAISED_AT, 0, 1, 0)


STEPS = [step.label(i) for i, step in enumerate(DEFAULT_POLICIES.for_kind("burglary").steps)]


@pytest.mark.parametrize("language", ["zh-CN", "en"])
@pytest.mark.parametrize("kind", ["panic", "burglary", "fire", "medical", "gas"])
def test_every_alarm_sms_for_the_longest_example_address_takes_two_segments(
    registry, language, kind
):
    unit, household = _longest(registry)
    t = translator(language)
    reply = t.gettext("Reply %(code)s to acknowledge.") % {"code": 4821}
    for step, duress in [*((s, False) for s in STEPS), (None, True)]:
        notice = alarm_notice(registry, _alarm(unit.id, household.id, kind), step, duress=duress)
        text = sms_text(notice, t, "Asia/Shanghai", reply)
        length = sms_length(text)
        assert (length.encoding, length.segments) == ("UCS-2", MAX_SEGMENTS), text
        assert text.endswith(reply), "the reply instruction is never cut"
        assert household.address in text, "the household's own address always stays"
        assert "13:46" in text, "the time is Shanghai's"


def test_the_longest_example_address_fits_whole_in_chinese(registry):
    unit, household = _longest(registry)
    t = translator("zh-CN")
    notice = alarm_notice(registry, _alarm(unit.id, household.id, "burglary"), "police")
    text = sms_text(notice, t, "Asia/Shanghai", "回复 3 确认。")
    assert text == (
        f"【tenhub】入室盗窃：{unit.name}{household.address}（{unit.id}/{household.id}），"
        f"13:46 起。升级：通知民警。警情 {ALARM_ID}。回复 3 确认。"
    )
    assert sms_length(text) == SmsLength("UCS-2", len(text), 2)


def test_an_address_no_sms_could_hold_is_cut_from_its_start(registry):
    place = (
        "广东省深圳市南山区粤海街道办事处科技园社区居民委员会"
        "高新技术产业园区南区高新南七道深圳湾科技生态园二期二区"
    )
    data = registry.model_dump(mode="json", exclude_none=True)
    data["units"][0]["name"] = place
    data["units"][0]["households"][1]["address"] = "10栋B座2单元1502室"
    long = Registry.model_validate(data)
    for language in ("zh-CN", "en"):
        t = translator(language)
        reply = t.gettext("Reply %(code)s to acknowledge.") % {"code": 12}
        notice = alarm_notice(long, _alarm("u-0001", "h-02", "fire"), "first alert")
        text = sms_text(notice, t, "Asia/Shanghai", reply)
        assert sms_length(text).segments == MAX_SEGMENTS, text
        assert text.endswith(reply)
        assert re.search(r"…[^…]*10栋B座2单元1502室", text), "the most specific end stays"
        assert "广东省" not in text, "the province goes first"


def test_an_english_address_stays_gsm7_in_one_or_two_segments():
    registry = Registry.model_validate(
        {
            "units": [
                {
                    "id": "u-1",
                    "name": "Block 3, Building 2",
                    "zone": "z-1",
                    "households": [
                        {"id": "h-1", "address": "2-101", "panel": "p-1"},
                        {"id": "h-2", "address": "2-102", "panel": "p-2"},
                    ],
                }
            ]
        }
    )
    t = translator("en")
    notice = alarm_notice(registry, _alarm("u-1", "h-2", "burglary"), "first alert")
    text = sms_text(notice, t, "Asia/Shanghai", "Reply 1 to acknowledge.")
    assert text == (
        "tenhub BURGLARY at Block 3, Building 2, 2-102 (u-1/h-2) since 13:46."
        f" Escalation: first alert. Alarm {ALARM_ID}. Reply 1 to acknowledge."
    )
    assert sms_length(text).encoding == "GSM-7" and sms_length(text).segments == 1
