"""Message catalogues: one Babel `.po` file per language, read when first asked for.

The `.po` files are the only source: they are read with Babel's `read_po` and compiled in
memory with `write_mo`, so there is no compiled `.mo` to build, ship or let go stale, and a
translator's edit takes effect at the next start. Message ids are the English texts.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_time
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

CATALOGUES = Path(__file__).resolve().parent
DOMAIN = "messages"
DEFAULT_LANGUAGE = "en"


def N_(message: str) -> str:  # the name gettext's tools look for
    """Mark a text for the catalogue where it is defined; it is translated where it is used."""
    return message


@functools.cache
def available_languages() -> tuple[str, ...]:
    """The language tags (`en`, `zh-CN`) that have a catalogue, sorted."""
    found = CATALOGUES.glob(f"*/LC_MESSAGES/{DOMAIN}.po")
    return tuple(sorted(path.parent.parent.name.replace("_", "-") for path in found))


def language_tag(value: str) -> str | None:
    """The tag of the catalogue `value` names (`zh_cn`, `zh-CN` → `zh-CN`), None if none."""
    wanted = value.strip().replace("_", "-").lower()
    return next((tag for tag in available_languages() if tag.lower() == wanted), None)


@dataclass(frozen=True)
class Translator:
    """Texts, times and the voice of one language."""

    language: str  # a tag with a catalogue: en, zh-CN
    translations: Translations
    locale: Locale

    def gettext(self, message: str) -> str:
        """The message in this language (the English id itself when not translated)."""
        return self.translations.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        """The singular or plural form for `n`, in this language."""
        return self.translations.ngettext(singular, plural, n)

    def time(self, epoch_ms: int, zone: str) -> str:
        """Hours and minutes of the instant in the time zone, as this language writes them."""
        at = datetime.fromtimestamp(epoch_ms / 1000, ZoneInfo(zone))
        return format_time(at, "HH:mm", locale=self.locale)


@functools.cache
def translator(language: str | None) -> Translator:
    """The translator of a language tag; the default language's for None or an unknown tag."""
    tag = language_tag(language or "") or DEFAULT_LANGUAGE
    path = CATALOGUES / tag.replace("-", "_") / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as po:
        catalog = read_po(po, locale=tag.replace("-", "_"), domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    translations = Translations(compiled, domain=DOMAIN)
    return Translator(tag, translations, Locale.parse(tag, sep="-"))
