"""The one assignment function of every holdout, shared by the policy and the simulator.

An entity's place in a playbook's experiment is a uniform number in [0, 1) taken from
sha256 of (playbook, entity type, entity id): the same on every run, every replay and every
machine, and independent between playbooks. The entity is held out when that number is below
the playbook's holdout share, so raising a share only adds entities to the holdout.
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def assignment_unit(playbook: str, entity_type: str, entity_id: str) -> float:
    """The entity's uniform draw in [0, 1) for ``playbook``."""
    key = f"{playbook}|{entity_type}|{entity_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / _SCALE


def held_out(playbook: str, entity_type: str, entity_id: str, share: float) -> bool:
    """True when the entity belongs to the playbook's holdout (never gets its actions)."""
    return assignment_unit(playbook, entity_type, entity_id) < share
