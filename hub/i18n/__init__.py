"""I18n: the languages tenhub speaks and writes, from Babel message catalogues.

Owns the catalogues (`messages.pot` and one `<lang>/LC_MESSAGES/messages.po` per language),
the `translator(language)` that SMS, calls, replies and later the pages speak through,
and the SMS segment counter that keeps an alarm's text within two segments.
"""

from hub.i18n.catalogues import (
    DEFAULT_LANGUAGE,
    Translator,
    available_languages,
    language_tag,
    translator,
)
from hub.i18n.segments import SmsLength, sms_length

__all__ = [
    "DEFAULT_LANGUAGE",
    "SmsLength",
    "Translator",
    "available_languages",
    "language_tag",
    "sms_length",
    "translator",
]
