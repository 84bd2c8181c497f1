"""Which delivery channels the hub has, built from its settings."""

from __future__ import annotations

import logging
from pathlib import Path

from alerts.channel import Channel
from alerts.push_channel import PushChannel, PushSubscription
from alerts.twilio_channels import SmsChannel, TwilioSettings, VoiceChannel
from alerts.vapid import VapidKeys
from hub.alarms.contact_store import ContactStore
from hub.settings import Settings

logger = logging.getLogger(__name__)


def twilio_configured(settings: Settings) -> bool:
    return bool(settings.twilio_account_sid and settings.twilio_auth_token and settings.twilio_from)


def vapid_key_path(settings: Settings) -> Path:
    if settings.vapid_key_file:
        return Path(settings.vapid_key_file)
    return Path(settings.db_path).with_name(Path(settings.db_path).stem + "-vapid.pem")


def delivery_channels(
    settings: Settings, public_url: str, contacts: ContactStore
) -> dict[str, Channel]:
    """SMS and voice when Twilio is configured, push always (blocking: keys on disk)."""
    channels: dict[str, Channel] = {}
    if twilio_configured(settings):
        twilio = TwilioSettings(
            account_sid=settings.twilio_account_sid or "",
            auth_token=settings.twilio_auth_token or "",
            from_number=settings.twilio_from or "",
            api_base=settings.twilio_api_base,
            status_callback_url=f"{public_url}/twilio/status",
            timeout_s=settings.twilio_timeout_s,
        )
        channels["sms"] = SmsChannel(twilio)
        channels["voice"] = VoiceChannel(twilio)
    else:
        logger.warning(
            "SMS and voice are off: set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_FROM;"
            " their messages wait in the outbox"
        )

    async def lookup(subscription_id: str) -> PushSubscription | None:
        found = await contacts.subscription(subscription_id)
        return (
            PushSubscription(found.id, found.endpoint, found.p256dh, found.auth) if found else None
        )

    keys = VapidKeys.load_or_create(vapid_key_path(settings), settings.vapid_subject)
    channels["push"] = PushChannel(keys, lookup, contacts.forget_subscription)
    return channels
