"""Governance: actions, the policy, approvals, the dispatcher and the audit trail.

Agents and handoffs propose actions (``actions``); the policy judges each (``verdicts``);
people approve or reject what needs them (``approvals``); only the dispatcher sends
(``dispatch``, ``targets``); every step is appended to a hash-chained trail (``audit``).
"""
