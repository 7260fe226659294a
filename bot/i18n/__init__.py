"""Customer-facing texts through gettext catalogs (English, Arabic, Urdu), loaded from .po.

The .po files are read with Babel at start-up, so there is no compile step to forget.
"""

from __future__ import annotations

import gettext
import io
from functools import cache
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LOCALES = Path(__file__).parent / "locales"
LANGUAGES = ("en", "ar", "ur")
RTL = frozenset({"ar", "ur"})
DOMAIN = "messages"

# Unicode first-strong and pop-directional isolates: a Latin name or a number inside an
# Arabic or Urdu sentence keeps its own direction without reordering its neighbours.
FSI, PDI = "\u2068", "\u2069"


@cache
def translations(language: str) -> gettext.NullTranslations:
    """The catalog of one language; English falls back to the message ids themselves.

    Every .po file of the language is read: `messages.po` first, then the others (such as
    `clock.po`) in name order, each a fallback for the ids the ones before it lack.
    """
    folder = LOCALES / language / "LC_MESSAGES"
    if language not in LANGUAGES or not folder.is_dir():
        return gettext.NullTranslations()
    paths = sorted(folder.glob("*.po"), key=lambda path: (path.stem != DOMAIN, path.name))
    merged: gettext.NullTranslations | None = None
    for path in paths:
        catalog = _load(path, language)
        if merged is None:
            merged = catalog
        else:
            merged.add_fallback(catalog)
    return merged or gettext.NullTranslations()


def _load(path: Path, language: str) -> gettext.GNUTranslations:
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=language)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def isolate(value: object, language: str) -> str:
    """Wrap an interpolated value in directional isolates when the sentence is right-to-left."""
    text = str(value)
    return f"{FSI}{text}{PDI}" if language in RTL else text


def translate(language: str, message: str, **values: object) -> str:
    """The message in `language`, with `{name}` placeholders filled in safely for RTL."""
    text = translations(language).gettext(message)
    return text.format(**{key: isolate(value, language) for key, value in values.items()})


def _(message: str) -> str:
    """Mark a string for extraction; translate it later with `translate`."""
    return message


_URDU_LETTERS = frozenset("ٹڈڑںےۓھہکگی")


def guess_language(text: str, *, hint: str | None = None, default: str = "en") -> str:
    """Arabic script with Urdu letters → ur, other Arabic script → ar, Latin → en; else hint."""
    arabic = [c for c in text if "\u0600" <= c <= "\u06ff" or "\u0750" <= c <= "\u077f"]
    if arabic:
        return "ur" if any(c in _URDU_LETTERS for c in arabic) else "ar"
    if any(c.isalpha() and c.isascii() for c in text):
        return "en"
    if hint:
        short = hint.split("-")[0].lower()
        if short in LANGUAGES:
            return short
    return default
