"""What each channel carries for one recipient: SMS with its reply code, a call that asks for
a keypress, a push with its acknowledge link."""

from __future__ import annotations

import json
from html import escape
from urllib.parse import quote

from hub.alarms.alarm_store import Alarm
from hub.alarms.contact_store import ContactTx
from hub.alarms.recipients import Recipient


def compose(
    contacts: ContactTx, alarm: Alarm, recipient: Recipient, text: str, public_url: str, now: int
) -> str:
    """The outbox payload (JSON) of one notification."""
    base = {"alarm_id": alarm.id, "role": recipient.role, "name": recipient.name}
    if recipient.channel == "sms":
        code = contacts.reply_code(recipient.phone, alarm.id, recipient.role, recipient.name, now)
        body = {"text": f"{text} Reply {code} to acknowledge.", "code": code}
    elif recipient.channel == "voice":
        # The code remembers as whom this phone was called, for the keypress that answers.
        contacts.reply_code(recipient.phone, alarm.id, recipient.role, recipient.name, now)
        body = {"text": text, "twiml": _call_twiml(alarm, text, public_url)}
    elif recipient.channel == "push":
        token = contacts.ack_token(alarm.id, recipient.phone, recipient.role, recipient.name, now)
        body = {
            "title": f"tenhub alarm: {alarm.kind}",
            "body": text,
            "tag": alarm.id,
            "ack_url": f"{public_url}/ack/{token}",
        }
    else:
        body = {"text": text}
    return json.dumps({**base, **body}, ensure_ascii=False)


def _call_twiml(alarm: Alarm, text: str, public_url: str) -> str:
    action = f"{public_url}/twilio/voice?alarm_id={quote(alarm.id)}"
    spoken = escape(text.replace("tenhub", "ten hub"))
    return (
        "<Response>"
        f'<Gather numDigits="1" timeout="10" method="POST" action="{escape(action)}">'
        f"<Say>{spoken}</Say><Say>Press 1 to acknowledge.</Say>"
        "</Gather>"
        "<Say>No key pressed. The alarm stays open. Goodbye.</Say>"
        "</Response>"
    )
