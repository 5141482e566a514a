"""Pattern recognizers for the personal data free text adds: Presidio's, offline.

Presidio (presidio-analyzer) runs here without a language model (its ``NoOpNlpEngine``), so
it finds what has a shape: emails, phone numbers (python-phonenumbers), IBANs and card numbers
(with their checksums), national ids, IP addresses. It finds no names: the names a CRM holds
are matched from the state store instead (revorch/agents/redact.py). Two shapes Presidio
misses are added as patterns: emails written out ("jane dot doe at acme dot com",
"jane[at]acme.com") and local phone numbers ("555-0199"), and numbers with a country code
that phonenumbers does not know as valid ("+44 234 567 0123").

Presidio pulls in spaCy, which takes seconds to import, so this module is imported only when
text is first checked, never by ``revorch.definitions``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
from presidio_analyzer.nlp_engine import NoOpNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    EsNifRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UkNinoRecognizer,
    UsSsnRecognizer,
)

# Presidio's entity -> the placeholder kind the model sees.
KIND_OF_ENTITY = {
    "EMAIL_ADDRESS": "EMAIL",
    "WRITTEN_EMAIL": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "LOCAL_PHONE": "PHONE",
    "PREFIXED_PHONE": "PHONE",
    "IBAN_CODE": "IBAN",
    "CREDIT_CARD": "CARD",
    "US_SSN": "NATIONAL_ID",
    "UK_NINO": "NATIONAL_ID",
    "ES_NIF": "NATIONAL_ID",
    "IP_ADDRESS": "IP",
}
# Presidio's weakest patterns (a bare 9-digit number as an SSN: 0.05) are left out; its
# validated ones score 0.4 and more.
SCORE_THRESHOLD = 0.3
# Regions whose national formats ("030/12345678") phonenumbers looks for; a number written
# with its country code is found whatever the region.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "NL", "ES", "IT", "AU", "IN", "BR", "JP", "SE", "CA")

# Every repetition is bounded (labels of at most 64 characters, at most 8 of them, as email
# addresses are): unbounded ones, as in Presidio's own email pattern, take minutes on a ticket
# of "a.a.a.a..." (quadratic backtracking), which anyone can write.
_DOT = r"(?:\s{0,3}[\[({]\s{0,3}dot\s{0,3}[\])}]\s{0,3}|\s{1,3}dot\s{1,3}|\.)"
_AT = r"(?:\s{0,3}[\[({]\s{0,3}at\s{0,3}[\])}]\s{0,3}|\s{1,3}at\s{1,3}|@)"
_LABEL = r"[a-z0-9_%+-]{1,64}"
_LOCAL = r"[\w!#$%&'*+/=?^`{|}~-]{1,64}"
EMAIL = rf"\b{_LOCAL}(?:\.{_LOCAL}){{0,8}}@\w[\w-]{{0,62}}(?:\.\w[\w-]{{0,62}}){{1,8}}\b"
# A plain "." joins labels only with no space around it, so "at checkout. Please" is no email;
# the spaced forms need the words "at" and "dot".
_NAME = rf"{_LABEL}(?:{_DOT}{_LABEL}){{0,8}}"
WRITTEN_EMAIL = rf"\b{_NAME}{_AT}{_NAME}{_DOT}[a-z]{{2,24}}\b"
LOCAL_PHONE = r"(?<![\w/.-])\d{3}-\d{4}(?![\w/-])"
# Groups of digits after a country code, each after a separator (so a run of digits has one
# reading and a long one cannot make the regex backtrack for ever).
PREFIXED_PHONE = r"(?<![\w+])\+\d{1,3}(?:[\s./-]{1,2}\(?\d+\)?){2,}(?![\w/-])"


@dataclass(frozen=True)
class Finding:
    """One piece of personal data in a text: where it is and what kind it is."""

    start: int
    end: int
    kind: str


class _EmailAnyDomain(EmailRecognizer):
    """Presidio's email recognizer with a bounded pattern (:data:`EMAIL`) and without its
    domain check: that check asks tldextract, which fetches the public suffix list from the
    network on first use, and drops addresses at domains it does not list
    (``legal@northwind.example``), which still name a person."""

    def validate_result(self, pattern_text: str) -> None:
        return None


@cache
def analyzer() -> AnalyzerEngine:
    """The analyzer, built once per process (about half a second)."""
    recognizers = [
        _EmailAnyDomain(patterns=[Pattern("email (bounded)", EMAIL, 0.5)]),
        PhoneRecognizer(supported_regions=PHONE_REGIONS),
        IbanRecognizer(),
        CreditCardRecognizer(),
        UsSsnRecognizer(),
        UkNinoRecognizer(),
        EsNifRecognizer(supported_language="en"),
        IpRecognizer(),
        PatternRecognizer("WRITTEN_EMAIL", patterns=[Pattern("written email", WRITTEN_EMAIL, 0.6)]),
        PatternRecognizer("LOCAL_PHONE", patterns=[Pattern("local phone", LOCAL_PHONE, 0.4)]),
        PatternRecognizer(
            "PREFIXED_PHONE", patterns=[Pattern("prefixed phone", PREFIXED_PHONE, 0.4)]
        ),
    ]
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=["en"])
    nlp = NoOpNlpEngine([{"lang_code": "en", "model_name": "none"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])


# Every kind above needs a digit, an "@" or the word "at": other text is not analyzed.
_MAY_HOLD = re.compile(r"\d|@|\bat\b", re.IGNORECASE)
# ISO dates and times (records are full of them) are no personal data, and phonenumbers spends
# most of its time on them: they are blanked before the analysis, keeping every offset.
_ISO_TIME = re.compile(
    r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?\b"
)


_GLUED = re.compile(r"(?:\w|[^\W\d_]-)$")


def find(text: str) -> list[Finding]:
    """The personal data the patterns find in ``text``, without overlaps (the longer one,
    then the likelier one, wins), in order."""
    text = _ISO_TIME.sub(lambda m: " " * len(m[0]), text)
    if not _MAY_HOLD.search(text):
        return []
    results = analyzer().analyze(
        text, language="en", entities=list(KIND_OF_ENTITY), score_threshold=SCORE_THRESHOLD
    )
    chosen: list[Finding] = []
    for r in sorted(results, key=lambda r: (r.start - r.end, -r.score, r.start)):
        kind = KIND_OF_ENTITY[r.entity_type]
        if kind == "PHONE" and _GLUED.search(text, 0, r.start):
            continue  # the digits of an id ("c-0123456"), which phonenumbers takes for a number
        if all(r.end <= f.start or r.start >= f.end for f in chosen):
            chosen.append(Finding(r.start, r.end, kind))
    return sorted(chosen, key=lambda f: f.start)
