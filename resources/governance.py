"""The policy, the audit anchor and the dispatcher's target as Dagster resources."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from resources.config_snapshot import ConfigFileResource
from revorch.governance.policy import Policy, load_policy
from revorch.governance.targets import OutboxFile, Target, Webhook


class GovernanceResource(ConfigFileResource):
    """The policy file (config/policy.yaml) and the file the audit trail's head is anchored in."""

    policy_path: str = Field(description="Path of the policy YAML file.")
    audit_anchor_path: str = Field(description="Append-only file of the audit trail's heads.")

    def config_path(self) -> str:
        return self.policy_path

    def policy(self) -> Policy:
        """The policy as the run read it when it started."""
        return load_policy(self.policy_path, text=self.snapshot_text())

    @property
    def anchor(self) -> Path:
        return Path(self.audit_anchor_path)


class DispatcherResource(dg.ConfigurableResource):
    """Where actions go: the outbox file, or a webhook when ``webhook_url`` is set (from
    REVORCH_WEBHOOK_URL; its signing secret from REVORCH_WEBHOOK_SECRET)."""

    outbox_path: str = Field(description="JSON-lines file of sent actions (the default target).")
    journal_path: str | None = Field(
        default=None,
        description="SQLite journal of delivery attempts, for crash recovery (default: "
        "dispatch-journal.sqlite3 beside the outbox file).",
    )
    webhook_url: str | None = Field(default=None, description="POST every action here instead.")
    webhook_secret: str | None = Field(default=None, description="HMAC key; environment only.")
    timeout_seconds: float = 10.0
    max_attempts: int = Field(default=5, description="Tries before an action is marked failed.")

    def target(self) -> Target:
        if self.webhook_url:
            return Webhook(self.webhook_url, self.webhook_secret, self.timeout_seconds)
        return OutboxFile(Path(self.outbox_path))

    @property
    def journal(self) -> Path:
        if self.journal_path:
            return Path(self.journal_path)
        return Path(self.outbox_path).parent / "dispatch-journal.sqlite3"
