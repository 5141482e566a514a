"""Personal data out of prompts: names, emails and phone numbers become placeholders.

Names are mostly known (the record's own people), so the fields that hold them are replaced
outright, and the names of the record's company's contacts (``known_names``) wherever they
stand in free text; emails and phone numbers are found by pattern in every string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import duckdb

NAME_FIELDS = ("first_name", "last_name", "name", "contact_name", "owner_name")
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PLACEHOLDER = re.compile(r"<(?:PERSON|EMAIL|PHONE)_\d+>")
# A phone number: 9 or more digits with separators; an ISO date (2026-11-03) is not one.
PHONE = re.compile(r"(?<![\w-])(?!\d{4}-\d{2}-\d{2})\+?\d[\d ().-]{7,}\d(?![\w-])")


MIN_NAME_LENGTH = 3  # shorter known names would blank out ordinary words


def redact(record: dict, known: Iterable[str] = ()) -> dict:
    """A copy of the record with personal data replaced by stable placeholders; ``known``
    names (the people the state store knows around this record) are replaced too."""
    return pseudonymise(record, known)[0]


def pseudonymise(record: dict, known: Iterable[str] = ()) -> tuple[dict, dict[str, str]]:
    """The redacted record, and what each placeholder stands for (to restore it where the
    policy allows). The same record always gives the same placeholders."""
    placeholders: dict[str, str] = {}

    def placeholder(kind: str, value: str) -> str:
        key = f"{kind}:{value}"
        if key not in placeholders:
            count = sum(1 for k in placeholders if k.startswith(f"{kind}:")) + 1
            placeholders[key] = f"<{kind}_{count}>"
        return placeholders[key]

    names = {str(record[field]) for field in NAME_FIELDS if isinstance(record.get(field), str)}
    names = {n for n in names | set(known) if len(n) >= MIN_NAME_LENGTH or n in names} - {""}

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

    redacted = {
        key: placeholder("PERSON", str(value))
        if key in NAME_FIELDS and isinstance(value, str) and value
        else clean(value)
        for key, value in record.items()
    }
    return redacted, {token: key.split(":", 1)[1] for key, token in placeholders.items()}


def restore(value: object, originals: dict[str, str]) -> object:
    """``value`` with every placeholder of ``originals`` put back."""
    if isinstance(value, dict):
        return {k: restore(v, originals) for k, v in value.items()}
    if isinstance(value, list):
        return [restore(v, originals) for v in value]
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: originals.get(m[0], m[0]), value)
    return value


KNOWN_NAMES_SQL = """
SELECT id, company_id, first_name, last_name FROM contacts
WHERE NOT _deleted AND (list_contains($companies, company_id) OR list_contains($contacts, id))
"""


def known_names(conn: duckdb.DuckDBPyConnection, records: list[dict]) -> list[list[str]]:
    """For each record, the first and last names of its contact and its company's contacts."""
    companies = sorted({r["company_id"] for r in records if r.get("company_id")})
    contacts = sorted({r["contact_id"] for r in records if r.get("contact_id")})
    by_company: dict[str, set[str]] = {}
    by_contact: dict[str, set[str]] = {}
    rows = conn.execute(KNOWN_NAMES_SQL, {"companies": companies, "contacts": contacts})
    for contact_id, company_id, first, last in rows.fetchall():
        names = {n for n in (first, last) if n}
        by_contact.setdefault(contact_id, set()).update(names)
        by_company.setdefault(company_id, set()).update(names)
    return [
        sorted(
            by_company.get(r.get("company_id"), set()) | by_contact.get(r.get("contact_id"), set())
        )
        for r in records
    ]


def personal_data_in(text: str, known: Iterable[str] = ()) -> list[str]:
    """What kinds of personal data ``text`` holds (not the values): an email, a phone number,
    or one of the ``known`` names, emails or phones."""
    found = []
    if EMAIL.search(text):
        found.append("email")
    if PHONE.search(text):
        found.append("phone")
    if any(
        len(value) >= MIN_NAME_LENGTH and re.search(rf"\b{re.escape(value)}\b", text)
        for value in known
    ):
        found.append("known person")
    return found
