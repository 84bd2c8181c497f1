"""What each channel carries for one recipient, in the recipient's language: SMS with its
reply code (two segments at most), a call that asks for a keypress, a push with its
acknowledge link."""

from __future__ import annotations

import json
from collections.abc import Callable
from html import escape
from urllib.parse import quote

from hub.alarms.alarm_store import Alarm
from hub.alarms.contact_store import ContactTx
from hub.alarms.recipients import KIND_WORDS, AlarmNotice, Recipient
from hub.i18n.catalogues import Translator, translator
from hub.i18n.segments import is_gsm7, sms_length

# Every alarm SMS fits in this many segments: the address is shortened, never the reply.
MAX_SEGMENTS = 2


def compose(
    contacts: ContactTx,
    notice: AlarmNotice,
    recipient: Recipient,
    public_url: str,
    now: int,
    language: str,
    zone: str,
) -> str:
    """The outbox payload (JSON) of one notification, in the recipient's language (else
    `language`), times in the time zone `zone`."""
    alarm = notice.alarm
    t = translator(recipient.language or language)
    base = {"alarm_id": alarm.id, "role": recipient.role, "name": recipient.name}
    if recipient.channel == "sms":
        code = contacts.reply_code(recipient.phone, alarm.id, recipient.role, recipient.name, now)
        reply = t.gettext("Reply %(code)s to acknowledge.") % {"code": code}
        body = {"text": sms_text(notice, t, zone, reply), "code": code}
    elif recipient.channel == "voice":
        # The code remembers as whom this phone was called, for the keypress that answers.
        contacts.reply_code(recipient.phone, alarm.id, recipient.role, recipient.name, now)
        text = alarm_text(notice, t, zone)
        body = {"text": text, "twiml": _call_twiml(alarm, text, t, public_url)}
    elif recipient.channel == "push":
        token = contacts.ack_token(alarm.id, recipient.phone, recipient.role, recipient.name, now)
        body = {
            "title": t.gettext("tenhub alarm: %(kind)s") % {"kind": kind_word(alarm.kind, t)},
            "body": alarm_text(notice, t, zone),
            "tag": alarm.id,
            "ack_url": f"{public_url}/ack/{token}",
        }
    else:
        body = {"text": alarm_text(notice, t, zone)}
    return json.dumps({**base, **body}, ensure_ascii=False)


def kind_word(kind: str, t: Translator) -> str:
    """The alarm's kind as a recipient reads it."""
    return t.gettext(KIND_WORDS[kind]) if kind in KIND_WORDS else kind.upper()


def place_of(notice: AlarmNotice, t: Translator) -> str:
    """Where the alarm is, in full: the unit's name and the household's address."""
    if notice.place is None or notice.address is None:
        return notice.alarm.unit_id
    return t.gettext("%(place)s, %(address)s") % {
        "place": notice.place,
        "address": notice.address,
    }


# How much an alarm's text says: in full, without the household's id, without the alarm's
# id either (the reply code names the alarm for the reply).
FULL, COMPACT, MINIMAL = "full", "compact", "minimal"


def alarm_text(
    notice: AlarmNotice, t: Translator, zone: str, where: str | None = None, form: str = FULL
) -> str:
    """The alarm's message: what, where (`where`, else in full), since when, which step;
    `form` says how much of it, for an SMS short of room."""
    alarm = notice.alarm
    if notice.duress:
        step = t.gettext("DURESS: the household may be held; do not call it")
    else:
        # A built-in step's name is in the catalogue; a policy's own is shown as written.
        name = t.gettext(notice.step) if notice.step else ""
        step = t.gettext("Escalation: %(step)s") % {"step": name}
    values = {
        "kind": kind_word(alarm.kind, t),
        "where": place_of(notice, t) if where is None else where,
        "household": f"{alarm.unit_id}/{alarm.household_id}",
        "time": t.time(alarm.raised_at, zone),
        "step": step,
        "alarm": alarm.id,
    }
    if form == MINIMAL:
        return t.gettext("tenhub %(kind)s at %(where)s since %(time)s. %(step)s.") % values
    if form == COMPACT:
        return (
            t.gettext("tenhub %(kind)s at %(where)s since %(time)s. %(step)s. Alarm %(alarm)s.")
            % values
        )
    return (
        t.gettext(
            "tenhub %(kind)s at %(where)s (%(household)s) since %(time)s."
            " %(step)s. Alarm %(alarm)s."
        )
        % values
    )


# An address cut to fit keeps at least this many characters of its end (building, unit,
# room) before the text leaves out an id to make room.
MIN_WHERE = 12


def sms_text(notice: AlarmNotice, t: Translator, zone: str, reply: str) -> str:
    """The alarm's SMS ending with `reply`, in MAX_SEGMENTS at most: the address is cut from
    its start (the building, unit and room stay); short of room, the ids go, never the reply."""
    where = place_of(notice, t)
    for form, min_kept in ((FULL, MIN_WHERE), (COMPACT, MIN_WHERE), (MINIMAL, 0)):

        def render(w: str, form: str = form) -> str:
            text = alarm_text(notice, t, zone, w, form)
            return t.gettext("%(text)s %(reply)s") % {"text": text, "reply": reply}

        text = fit(render, where, min_kept)
        if text is not None:
            return text
    raise AssertionError("fit() with min_kept=0 always renders")


def fit(
    render: Callable[[str], str], value: str, min_kept: int, segments: int = MAX_SEGMENTS
) -> str | None:
    """`render(value)`, or with the longest end of `value` that keeps it in `segments`;
    None when fewer than `min_kept` characters of it would be left (at 0: the shortest)."""
    text = render(value)
    if sms_length(text).segments <= segments:
        return text
    mark = "..." if is_gsm7(value) else "…"

    def cut(kept: int) -> str:
        return render(mark + value[len(value) - kept :] if kept else mark)

    low, high = 0, len(value) - 1  # the most characters of `value` that fit
    while low < high:
        middle = (low + high + 1) // 2
        if sms_length(cut(middle)).segments <= segments:
            low = middle
        else:
            high = middle - 1
    if min_kept and low < min(min_kept, len(value)):
        return None
    return cut(low)


def _call_twiml(alarm: Alarm, text: str, t: Translator, public_url: str) -> str:
    action = f"{public_url}/twilio/voice?alarm_id={quote(alarm.id)}"
    spoken = escape(text.replace("tenhub", "ten hub"))
    prompt = escape(t.gettext("Press 1 to acknowledge."))
    goodbye = escape(t.gettext("No key pressed. The alarm stays open. Goodbye."))
    say = f'<Say language="{escape(t.language)}">'
    return (
        "<Response>"
        f'<Gather numDigits="1" timeout="10" method="POST" action="{escape(action)}">'
        f"{say}{spoken}</Say>{say}{prompt}</Say>"
        "</Gather>"
        f"{say}{goodbye}</Say>"
        "</Response>"
    )
