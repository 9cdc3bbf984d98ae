"""The printed report's headings in the clinic's language, beside English (reports in
India's district hospitals are read in English; the headings help the clinic's staff
and the patient). The language is the one the box gives in its status (``language``
in the box's config): ``en``, ``hi`` or ``kn``."""

from __future__ import annotations

import json
from typing import Any

WORDS: dict[str, dict[str, str]] = {
    "hi": {
        "Radiology report": "रेडियोलॉजी रिपोर्ट",
        "ADDENDUM": "परिशिष्ट",
        "Clinic": "क्लिनिक",
        "Patient": "रोगी",
        "Study": "जाँच",
        "Study UID": "जाँच UID",
        "Report": "रिपोर्ट",
        "version": "संस्करण",
        "CRITICAL FINDING - act on this report now": ("गंभीर निष्कर्ष - इस रिपोर्ट पर तुरंत कार्रवाई करें"),
        "Findings": "जाँच के परिणाम",
        "Impression": "निष्कर्ष",
        "Signed": "हस्ताक्षर",
        "Accession number": "ऑर्डर संख्या",
        "Referred by": "भेजने वाले डॉक्टर",
        "Clinical question": "क्लिनिकल प्रश्न",
        "Read on a lossy preview": "कम्प्रेस की गई प्रारंभिक छवियों पर पढ़ी गई",
    },
    "kn": {
        "Radiology report": "ರೇಡಿಯಾಲಜಿ ವರದಿ",
        "ADDENDUM": "ಅನುಬಂಧ",
        "Clinic": "ಚಿಕಿತ್ಸಾಲಯ",
        "Patient": "ರೋಗಿ",
        "Study": "ಪರೀಕ್ಷೆ",
        "Study UID": "ಪರೀಕ್ಷೆಯ UID",
        "Report": "ವರದಿ",
        "version": "ಆವೃತ್ತಿ",
        "CRITICAL FINDING - act on this report now": ("ತುರ್ತು ಸಂಶೋಧನೆ - ಈ ವರದಿಯ ಮೇಲೆ ಈಗಲೇ ಕ್ರಮ ಕೈಗೊಳ್ಳಿ"),
        "Findings": "ಕಂಡುಬಂದ ಅಂಶಗಳು",
        "Impression": "ಅಭಿಪ್ರಾಯ",
        "Signed": "ಸಹಿ",
        "Accession number": "ಆರ್ಡರ್ ಸಂಖ್ಯೆ",
        "Referred by": "ಕಳುಹಿಸಿದ ವೈದ್ಯರು",
        "Clinical question": "ಕ್ಲಿನಿಕಲ್ ಪ್ರಶ್ನೆ",
        "Read on a lossy preview": "ಸಂಕುಚಿತ ಪ್ರಾಥಮಿಕ ಚಿತ್ರಗಳ ಮೇಲೆ ಓದಲಾಗಿದೆ",
    },
}


def language_of(store: Any, box_id: str) -> str:
    """The clinic's language as its box last said (English when it never did)."""
    row = store.db.execute("SELECT status FROM boxes WHERE box_id=?", [box_id]).fetchone()
    try:
        lang = json.loads(row[0]).get("language", "en") if row else "en"
    except ValueError:
        return "en"
    return lang if lang in WORDS else "en"


def heading(lang: str, english: str) -> str:
    """``english`` with its translation after it ("Findings / ಕಂಡುಬಂದ ಅಂಶಗಳು")."""
    local = WORDS.get(lang, {}).get(english)
    return f"{english} / {local}" if local else english
