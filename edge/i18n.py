"""The clinic's page in English, Hindi and Kannada: gettext catalogues (``.po`` files
under ``edge/locale/<lang>/LC_MESSAGES/``) read with Babel when the app starts.

To add a language: copy ``edge/locale/hi/LC_MESSAGES/messages.po`` to a folder named
by its code, translate each ``msgstr``, and add the code and its own name to
``LANGUAGES``; a test checks that every message of the pages has a translation in
every catalogue.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from babel.messages.pofile import read_po

LANGUAGES = {"en": "English", "hi": "हिन्दी", "kn": "ಕನ್ನಡ"}
LOCALE_DIR = Path(__file__).parent / "locale"


@cache
def catalogue(lang: str) -> dict[str, str]:
    path = LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"
    if lang == "en" or not path.exists():
        return {}
    with open(path, "rb") as f:
        cat = read_po(f, locale=lang)
    return {str(m.id): str(m.string) for m in cat if m.id and m.string and not m.fuzzy}


def gettext(lang: str, message: str) -> str:
    return catalogue(lang).get(message, message)
