"""Personal data out of prompts: people, companies, emails, phones, bank and card numbers,
national ids and IP addresses become placeholders.

Names are mostly known: the CRM holds its contacts, owners (sales reps, CSMs) and companies.
So the fields that hold a name are replaced outright (``first_name``, ``company_name``, ...),
and every name the state store knows (any company's contacts, every owner, every company
name and domain) is replaced wherever it stands in free text (:class:`KnownNames`, read by
:func:`known_names`). What free text adds beyond the CRM's names is found by pattern
(revorch/agents/recognizers.py: Presidio's recognizers, offline).

Placeholders are numbered per record and kind in the order they are met (``<PERSON_1>``,
``<COMPANY_1>``, ``<EMAIL_1>``, ...), so the same record and the same CRM always give the
same placeholders, and the model's answer can be mapped back (:func:`restore`) where the
policy allows.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import duckdb

NAME_FIELDS = ("first_name", "last_name", "name", "contact_name", "owner_name")
COMPANY_FIELDS = ("company_name",)
KINDS = ("PERSON", "COMPANY", "EMAIL", "PHONE", "IBAN", "CARD", "NATIONAL_ID", "IP")
PLACEHOLDER = re.compile(rf"<(?:{'|'.join(KINDS)})_\d+>")

MIN_NAME_LENGTH = 3  # a shorter single known name would blank out ordinary words
_WORD = re.compile(r"[^\W_]+")
# What may stand between the words of a name in free text: "Mary Smith", "O'Brien",
# "Smith-Jones", "blue-labs.com".
_BETWEEN_WORDS = re.compile(r"[^\w\n]{1,3}")


def _key(text: str) -> tuple[str, ...]:
    return tuple(word.lower() for word in _WORD.findall(text))


@dataclass(frozen=True)
class KnownNames:
    """The names the CRM holds, by their words in lower case, with their kind (``PERSON`` or
    ``COMPANY``); and ``literals``: values matched as they are (the record's own people's
    emails and phones, which patterns may not recognise in the CRM's own format).

    A name of several words matches in any case ("mary smith"); a name of one word only when
    written with a capital (so the last name "Long" leaves "a long call" alone) and when it
    has at least :data:`MIN_NAME_LENGTH` letters.
    """

    names: Mapping[tuple[str, ...], str] = field(default_factory=dict)
    literals: frozenset[str] = frozenset()
    longest: int = 0

    @classmethod
    def of(
        cls,
        people: Iterable[str] = (),
        companies: Iterable[str] = (),
        literals: Iterable[str] = (),
    ) -> KnownNames:
        names: dict[tuple[str, ...], str] = {}
        for kind, values in (("COMPANY", companies), ("PERSON", people)):
            for value in values:
                key = _key(value or "")
                if len(key) > 1 or (key and len(key[0]) >= MIN_NAME_LENGTH):
                    names[key] = kind
        return cls(
            names,
            frozenset(v for v in literals if v and len(v) >= MIN_NAME_LENGTH),
            max(map(len, names), default=0),
        )

    def with_record(self, record: dict) -> KnownNames:
        """These names and the record's own (its name fields, any length from two letters),
        so that they are replaced in its free text too."""
        own: dict[tuple[str, ...], str] = {}
        for key, value in record.items():
            kind = _field_kind(key)
            words = _key(value) if kind and isinstance(value, str) else ()
            if len(words) > 1 or (words and len(words[0]) >= 2):
                own[words] = kind
        if not own:
            return self
        names = {**self.names, **own}
        return KnownNames(names, self.literals, max(self.longest, *map(len, own)))

    def with_literals(self, literals: Iterable[str]) -> KnownNames:
        extra = frozenset(v for v in literals if v and len(v) >= MIN_NAME_LENGTH)
        return KnownNames(self.names, self.literals | extra, self.longest)

    def find(self, text: str) -> Iterator[tuple[int, int, str]]:
        """(start, end, kind) of every known name in ``text``, longest first at each word."""
        words = list(_WORD.finditer(text))
        i = 0
        while i < len(words):
            for n in range(min(self.longest, len(words) - i), 0, -1):
                span = words[i : i + n]
                if any(
                    not _BETWEEN_WORDS.fullmatch(text[a.end() : b.start()])
                    for a, b in itertools.pairwise(span)
                ):
                    continue
                kind = self.names.get(tuple(w[0].lower() for w in span))
                if kind is not None and (n > 1 or span[0][0][0].isupper()):
                    yield span[0].start(), span[-1].end(), kind
                    i += n - 1
                    break
            i += 1


NO_NAMES = KnownNames()


def redact(record: dict, known: KnownNames | Iterable[str] = NO_NAMES) -> dict:
    """A copy of the record with personal data replaced by stable placeholders; ``known``
    names (the people and companies the state store knows) are replaced too."""
    return pseudonymise(record, known)[0]


def pseudonymise(
    record: dict, known: KnownNames | Iterable[str] = NO_NAMES
) -> tuple[dict, dict[str, str]]:
    """The redacted record, and what each placeholder stands for (to restore it where the
    policy allows). The same record and names always give the same placeholders."""
    known = _as_known(known).with_record(record)
    placeholders: dict[tuple[str, str], str] = {}
    originals: dict[str, str] = {}
    counts: dict[str, int] = {}

    def placeholder(kind: str, value: str) -> str:
        # One placeholder for one name however it is written ("ACME Corp", "acme corp").
        same = " ".join(_key(value)) if kind in ("PERSON", "COMPANY") else value
        if (kind, same) not in placeholders:
            counts[kind] = counts.get(kind, 0) + 1
            placeholders[kind, same] = f"<{kind}_{counts[kind]}>"
            originals[placeholders[kind, same]] = value
        return placeholders[kind, same]

    def clean(value: object) -> object:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if not isinstance(value, str):
            return value
        return "".join(
            placeholder(kind, text) if kind else text for text, kind in _pieces(value, known)
        )

    redacted = {}
    for key, value in record.items():
        whole = _field_kind(key)
        if whole and isinstance(value, str) and value:
            redacted[key] = placeholder(whole, value)
        else:
            redacted[key] = clean(value)
    return redacted, originals


def _field_kind(key: str) -> str | None:
    if key in NAME_FIELDS:
        return "PERSON"
    if key in COMPANY_FIELDS:
        return "COMPANY"
    return None


def _as_known(known: KnownNames | Iterable[str]) -> KnownNames:
    return known if isinstance(known, KnownNames) else KnownNames.of(people=known)


def _pieces(text: str, known: KnownNames) -> Iterator[tuple[str, str | None]]:
    """``text`` cut into pieces, each with the kind of personal data it is (or None).
    Literals first, then patterns, then known names, each in what the one before left."""
    from revorch.agents import recognizers  # Presidio takes seconds to import: only when used

    def literals(part: str) -> Iterator[tuple[str, str | None]]:
        for value in sorted(known.literals, key=len, reverse=True):
            if value in part:
                head, _, tail = part.partition(value)
                yield from literals(head)
                yield value, "EMAIL" if "@" in value else "PHONE"
                yield from literals(tail)
                return
        yield from spans(part, [(f.start, f.end, f.kind) for f in recognizers.find(part)], names)

    def names(part: str) -> Iterator[tuple[str, str | None]]:
        yield from spans(part, list(known.find(part)), None)

    def spans(part, found, rest) -> Iterator[tuple[str, str | None]]:
        position = 0
        for start, end, kind in found:
            yield from rest(part[position:start]) if rest else [(part[position:start], None)]
            yield part[start:end], kind
            position = end
        yield from rest(part[position:]) if rest else [(part[position:], None)]

    for piece, kind in literals(text):
        if piece:
            yield piece, kind


def restore(value: object, originals: dict[str, str]) -> object:
    """``value`` with every placeholder of ``originals`` put back."""
    if isinstance(value, dict):
        return {k: restore(v, originals) for k, v in value.items()}
    if isinstance(value, list):
        return [restore(v, originals) for v in value]
    if isinstance(value, str):
        return PLACEHOLDER.sub(lambda m: originals.get(m[0], m[0]), value)
    return value


# Every name the CRM holds, deleted records included (a deleted contact is still a person).
CRM_NAMES_SQL = """
SELECT 'PERSON' AS kind, first_name AS name FROM contacts
UNION SELECT 'PERSON', last_name FROM contacts
UNION SELECT 'PERSON', first_name || ' ' || last_name FROM contacts
UNION SELECT 'PERSON', first_name FROM owners
UNION SELECT 'PERSON', last_name FROM owners
UNION SELECT 'PERSON', first_name || ' ' || last_name FROM owners
UNION SELECT 'COMPANY', name FROM companies
UNION SELECT 'COMPANY', domain FROM companies
"""

# The record's own people: their emails and phones as the CRM writes them.
RECORD_CONTACTS_SQL = """
SELECT id, company_id, email, phone FROM contacts
WHERE company_id IN (SELECT unnest($companies)) OR id IN (SELECT unnest($contacts))
"""


def crm_names(conn: duckdb.DuckDBPyConnection) -> KnownNames:
    """Every person (contacts, owners) and company (names, domains) the state store holds."""
    rows = conn.execute(CRM_NAMES_SQL).fetchall()
    return KnownNames.of(
        people=(name for kind, name in rows if kind == "PERSON" and name),
        companies=(name for kind, name in rows if kind == "COMPANY" and name),
    )


def known_names(conn: duckdb.DuckDBPyConnection, records: list[dict]) -> list[KnownNames]:
    """For each record, what to replace in it: every name the CRM holds, and the emails and
    phones of its contact and its company's contacts."""
    everyone = crm_names(conn)
    companies = sorted({r["company_id"] for r in records if r.get("company_id")})
    contacts = sorted({r["contact_id"] for r in records if r.get("contact_id")})
    by_company: dict[str, set[str]] = {}
    by_contact: dict[str, set[str]] = {}
    rows = conn.execute(RECORD_CONTACTS_SQL, {"companies": companies, "contacts": contacts})
    for contact_id, company_id, email, phone in rows.fetchall():
        values = {v for v in (email, phone) if v}
        by_contact.setdefault(contact_id, set()).update(values)
        by_company.setdefault(company_id, set()).update(values)
    return [
        everyone.with_literals(
            by_company.get(r.get("company_id"), set()) | by_contact.get(r.get("contact_id"), set())
        )
        for r in records
    ]


def personal_data_in_record(record: object, known: KnownNames = NO_NAMES) -> list[str]:
    """The kinds of personal data (not the values) a record as sent to the model still holds:
    a name field that is not a placeholder, or anything :func:`pseudonymise` would replace.
    Only strings are looked at: a number such as ``annual_revenue`` is never a phone."""
    found: set[str] = set()
    if isinstance(record, dict):
        known = known.with_record(record)

    def walk(value: object, key: str | None = None) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value:
            whole = _field_kind(key) if key else None
            if whole and not PLACEHOLDER.fullmatch(value):
                found.add(whole)
            found.update(kind for _, kind in _pieces(value, known) if kind)

    walk(record)
    return sorted(found)


def personal_data_in(text: str, known: KnownNames | Iterable[str] = NO_NAMES) -> list[str]:
    """The kinds of personal data ``text`` holds (see :func:`personal_data_in_record`)."""
    return sorted({kind for _, kind in _pieces(text, _as_known(known)) if kind})


def record_in_prompt(prompt: str | list[dict]) -> object:
    """The record a stored prompt (the JSON list of chat messages) carried, decoded from
    between ``<record>`` and ``</record>``; the whole user text when it is not JSON."""
    messages = json.loads(prompt) if isinstance(prompt, str) else prompt
    text = "\n".join(m["content"] for m in messages if m.get("role") == "user")
    inner = text.strip().removeprefix("<record>").removesuffix("</record>")
    try:
        return json.loads(inner)
    except ValueError:
        return text


STORED_PROMPTS_SQL = """
SELECT decision_id, entity_id, CAST(input AS VARCHAR), CAST(prompt AS VARCHAR)
FROM agents.decisions WHERE agent = ? AND prompt IS NOT NULL ORDER BY decision_id
"""


@dataclass(frozen=True)
class StoredPrompt:
    """A prompt an agent sent, as stored: the record it carried and the names to look for."""

    decision_id: str
    entity_id: str
    record: object
    known: KnownNames


def stored_prompts(conn: duckdb.DuckDBPyConnection, agent: str) -> list[StoredPrompt]:
    """Every prompt ``agent`` stored, with the names the CRM holds for its record (read in
    one go, so the connection can be closed before the prompts are looked at)."""
    rows = conn.execute(STORED_PROMPTS_SQL, [agent]).fetchall()
    names = known_names(conn, [json.loads(row[2]) for row in rows]) if rows else []
    return [
        StoredPrompt(decision_id, entity_id, record_in_prompt(prompt), known)
        for (decision_id, entity_id, _, prompt), known in zip(rows, names, strict=True)
    ]


def prompt_leaks(prompts: list[StoredPrompt]) -> list[dict]:
    """The prompts that hold personal data: each with its decision, entity and the kinds
    found (never the values)."""
    return [
        {"decision_id": p.decision_id, "entity_id": p.entity_id, "found": found}
        for p in prompts
        if (found := personal_data_in_record(p.record, p.known))
    ]
