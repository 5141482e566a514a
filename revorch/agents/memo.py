"""Decision identity: the canonical hash of an input, and the memo key of a decision."""

from __future__ import annotations

import hashlib
import json


class Stable(dict):
    """A record whose values are already what :func:`_normalise` would make them (sorted
    keys, rounded floats, text times: the agents' inputs), so it is dumped as it is."""


def canonical_json(record: dict) -> str:
    """One text per input whatever the key order or float noise: what is hashed and stored."""
    # Walking every value again costs as much as the dump itself, a run scores every open lead.
    plain = record if type(record) is Stable else _normalise(record)
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)


def input_hash(record: dict) -> str:
    return text_hash(canonical_json(record))


def text_hash(canonical: str) -> str:
    """:func:`input_hash` of the record whose :func:`canonical_json` is ``canonical``."""
    return hashlib.sha256(canonical.encode()).hexdigest()


def decision_id(agent: str, prompt_version: str, model: str, input_digest: str) -> str:
    key = "\x1f".join((agent, prompt_version, model, input_digest))
    return hashlib.sha256(key.encode()).hexdigest()[:32]


_AS_IS = (str, int, bool, type(None))  # most values: checked first, returned as they are


def _normalise(value: object) -> object:
    if type(value) in _AS_IS:
        return value
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value
