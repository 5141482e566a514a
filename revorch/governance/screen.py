"""Screening an agent's words before they leave: untrusted text is held, never edited.

What a model wrote (``payload.model_text``) is data from an untrusted source. Before the
dispatcher sends an action, its model text is screened for:

- **outside addresses**: an email address the CRM does not hold (contacts, owners);
- **outside links**: a URL whose host is not a domain the CRM holds (companies' domains and
  the domains of the addresses it holds);
- **instructions**: words aimed at a tool or a person that a recommendation never needs
  (:data:`INSTRUCTIONS`; short on purpose, documented in docs/governance.md);
- **personal data** in what a model wrote: phones, IBANs, card numbers, national ids, IPs
  (the recognizers redaction uses). The model only ever saw placeholders, so such a value is
  invented or planted, never the CRM's.

Any finding holds the action for a person (verdict ``approve``, the finding named among the
verdict's rules, so it is in the audit trail); the text is never changed.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import duckdb

from revorch.governance.actions import MODEL_TEXT
from revorch.governance.policy import STRICTNESS, Judgement

EMAIL = re.compile(r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)+", re.ASCII)
URL = re.compile(r"\b(?:[a-z][a-z0-9+.-]*://|www\.)[^\s<>\"'()\[\]]+", re.IGNORECASE)

# Instructions a recommendation never needs: to override the rules, to move data somewhere,
# to address the model or a tool, or to make a person act on a link or money.
INSTRUCTIONS: dict[str, re.Pattern[str]] = {
    "override": re.compile(
        r"\b(ignore|disregard|forget|override)\b.{0,40}"
        r"\b(previous|prior|above|earlier|all|your|the)\b.{0,30}"
        r"\b(instructions?|rules?|prompts?|polic(y|ies)|guidelines?)\b",
        re.IGNORECASE | re.DOTALL,
    ),
    "move_data": re.compile(
        r"\b(send|forward|e-?mail|export|share|upload|post|copy|transfer|leak)\b.{0,60}"
        r"\b(contact ?list|contacts|customer (list|data)|all (the )?data|database|records|"
        r"credentials|passwords?|api[ _-]?keys?|secrets?|tokens?)\b",
        re.IGNORECASE | re.DOTALL,
    ),
    "forward_to": re.compile(r"\b(forward|bcc|cc)\b.{0,40}\bto\b", re.IGNORECASE | re.DOTALL),
    "address_the_model": re.compile(
        r"\b(system prompt|developer message|new instructions|you are now|as an ai|"
        r"tool_calls?|function_call|jailbreak)\b",
        re.IGNORECASE,
    ),
    "act_on_link_or_money": re.compile(
        r"\b(click (here|the link|this link)|wire (the )?(money|funds|transfer)|gift cards?|"
        r"reset (your|the) password|verify your account)\b",
        re.IGNORECASE,
    ),
}


class Screen:
    """What the CRM holds: the addresses and domains model text may name. From the state
    store (:meth:`from_state`), read only when a text names an address or a link, so a batch
    of clean text costs no read of every contact."""

    def __init__(
        self,
        emails: frozenset[str] | None = None,
        domains: frozenset[str] | None = None,
        *,
        conn: duckdb.DuckDBPyConnection | None = None,
    ) -> None:
        self._known = None if conn is not None else (emails or frozenset(), domains or frozenset())
        self._conn = conn
        # Many actions carry the same words (templated reasons): each text is screened once.
        self._screened: dict[tuple[str, bool], list[str]] = {}

    @classmethod
    def from_state(
        cls, conn: duckdb.DuckDBPyConnection, payloads: list[dict] | None = None
    ) -> Screen:
        """What the CRM holds. With ``payloads``, only the addresses and domains their model
        text names (the same findings for them, without reading every contact into Python:
        a dispatch of a few actions then costs the same at a million contacts); without, a
        screen that reads them from ``conn`` when first needed (use it while ``conn`` is
        open)."""
        if payloads is not None:
            return cls._named_in(conn, [model_text_of(p) for p in payloads])
        return cls(conn=conn)

    @property
    def emails(self) -> frozenset[str]:
        return self._held()[0]

    @property
    def domains(self) -> frozenset[str]:
        return self._held()[1]

    def _held(self) -> tuple[frozenset[str], frozenset[str]]:
        if self._known is None:
            emails = {
                e.lower()
                for (e,) in self._conn.execute(
                    "SELECT email FROM contacts WHERE email IS NOT NULL "
                    "UNION SELECT email FROM owners WHERE email IS NOT NULL"
                ).fetchall()
            }
            domains = {
                d.lower().removeprefix("www.")
                for (d,) in self._conn.execute(
                    "SELECT domain FROM companies WHERE domain IS NOT NULL"
                ).fetchall()
            }
            domains |= {e.rsplit("@", 1)[1] for e in emails}
            self._known = (frozenset(emails), frozenset(domains))
        return self._known

    @classmethod
    def _named_in(cls, conn: duckdb.DuckDBPyConnection, texts: list[str]) -> Screen:
        addresses = {m.lower().rstrip(".") for t in texts for m in EMAIL.findall(t)}
        hosts = {_host(m) for t in texts for m in URL.findall(t)} - {""}
        # Every domain a finding may ask about: each host's suffixes (see _holds_domain).
        suffixes = {
            ".".join(parts[i:])
            for host in hosts
            for parts in [host.split(".")]
            for i in range(len(parts) - 1)
        }
        if not addresses and not suffixes:
            return cls(frozenset(), frozenset())
        emails = {
            e
            for (e,) in conn.execute(
                "SELECT lower(email) AS e FROM contacts WHERE lower(email) IN (SELECT unnest($a)) "
                "UNION SELECT lower(email) FROM owners WHERE lower(email) IN (SELECT unnest($a))",
                {"a": sorted(addresses)},
            ).fetchall()
        }
        domains = {
            d
            for (d,) in conn.execute(
                "SELECT d FROM (SELECT regexp_replace(lower(domain), '^www\\.', '') AS d "
                "FROM companies UNION SELECT string_split(lower(email), '@')[-1] FROM contacts "
                "UNION SELECT string_split(lower(email), '@')[-1] FROM owners) "
                "WHERE d IN (SELECT unnest($s))",
                {"s": sorted(suffixes)},
            ).fetchall()
        }
        return cls(frozenset(emails), frozenset(domains))

    def findings(self, payload: dict) -> list[str]:
        """Why the payload's model text must not leave without a person; empty if clean."""
        text = model_text_of(payload)
        if not text:
            return []
        key = (text, _model_wrote(payload))
        if key not in self._screened:
            self._screened[key] = self._findings(*key)
        return list(self._screened[key])

    def _findings(self, text: str, model_wrote: bool) -> list[str]:
        found = []
        for address in sorted({m.lower().rstrip(".") for m in EMAIL.findall(text)}):
            if address not in self.emails:
                found.append(f"outside address {address}")
        for host in sorted({_host(m) for m in URL.findall(text)} - {""}):
            if not self._holds_domain(host):
                found.append(f"outside link {host}")
        found += [f"instruction ({name})" for name, p in INSTRUCTIONS.items() if p.search(text)]
        if model_wrote:  # our own offline tier's words need no recognizer's time
            from revorch.agents import recognizers  # Presidio takes seconds to import

            kinds = {f.kind for f in recognizers.find(text)} - {"EMAIL"}  # emails: above
            found += [f"personal data ({kind.lower()})" for kind in sorted(kinds)]
        return found

    def _holds_domain(self, host: str) -> bool:
        parts = host.split(".")
        return any(".".join(parts[i:]) in self.domains for i in range(len(parts) - 1))


def model_text_of(payload: dict) -> str:
    """Every string of the payload's model text, one per line."""
    strings: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    text = payload.get(MODEL_TEXT)
    if isinstance(text, dict):
        walk({k: v for k, v in text.items() if k != "written_by"})
    else:
        walk(text)
    return "\n".join(strings)


def _model_wrote(payload: dict) -> bool:
    """Whether a model wrote the payload's text (``written_by`` names the llm tier); unknown
    counts as written by a model."""
    text = payload.get(MODEL_TEXT)
    written_by = text.get("written_by") if isinstance(text, dict) else None
    return not isinstance(written_by, str) or not written_by.endswith("(offline tier)")


def _host(url: str) -> str:
    if url.lower().startswith("www."):
        url = "http://" + url
    return (urlsplit(url).hostname or "").lower().removeprefix("www.")


def screened(judgement: Judgement, findings: list[str]) -> Judgement:
    """The policy's verdict, held for a person when the screen found anything."""
    if not findings:
        return judgement
    verdict = judgement.verdict if STRICTNESS[judgement.verdict] > 0 else "approve"
    reasons = judgement.rules + tuple(f"screen: {finding}" for finding in findings)
    return Judgement(verdict, reasons, judgement.policy_version)


def payload_of(action: dict) -> dict:
    return (
        json.loads(action["payload"]) if isinstance(action["payload"], str) else action["payload"]
    )
