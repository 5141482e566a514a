"""Personal data out of prompts: names, emails and phone numbers become placeholders.

Names are mostly known (the record's own people), so the fields that hold them are replaced
outright; emails and phone numbers are found by pattern in every string, free text included.
"""

from __future__ import annotations

import re

NAME_FIELDS = ("first_name", "last_name", "name", "contact_name", "owner_name")
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<![\w-])\+?\d[\d ().-]{7,}\d(?![\w-])")


def redact(record: dict) -> dict:
    """A copy of the record with personal data replaced by stable placeholders."""
    placeholders: dict[str, str] = {}

    def placeholder(kind: str, value: str) -> str:
        key = f"{kind}:{value}"
        if key not in placeholders:
            count = sum(1 for k in placeholders if k.startswith(f"{kind}:")) + 1
            placeholders[key] = f"<{kind}_{count}>"
        return placeholders[key]

    names = {str(record[field]) for field in NAME_FIELDS if isinstance(record.get(field), str)} - {
        ""
    }

    def clean(value: object) -> object:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if not isinstance(value, str):
            return value
        text = EMAIL.sub(lambda m: placeholder("EMAIL", m[0]), value)
        text = PHONE.sub(lambda m: placeholder("PHONE", m[0]), text)
        for name in sorted(names, key=len, reverse=True):
            text = re.sub(rf"\b{re.escape(name)}\b", placeholder("PERSON", name), text)
        return text

    return {
        key: placeholder("PERSON", str(value))
        if key in NAME_FIELDS and isinstance(value, str) and value
        else clean(value)
        for key, value in record.items()
    }
