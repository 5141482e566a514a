"""The policy, the audit anchor and the dispatcher's target as Dagster resources."""

from pathlib import Path
from typing import Literal

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


DispatchTarget = Literal["outbox", "webhook", "hubspot", "salesforce"]
WriteBackMode = Literal["dry_run", "live"]


class DispatcherResource(dg.ConfigurableResource):
    """Where actions go (REVORCH_DISPATCH_TARGET) and, for a CRM, whether the writes are made
    (REVORCH_WRITEBACK); docs/operations.md. The webhook's URL comes from REVORCH_WEBHOOK_URL,
    its signing secret from REVORCH_WEBHOOK_SECRET."""

    outbox_path: str = Field(description="JSON-lines file of sent actions (the default target).")
    journal_path: str | None = Field(
        default=None,
        description="SQLite journal of delivery attempts, for crash recovery (default: "
        "dispatch-journal.sqlite3 beside the outbox file).",
    )
    dispatch_target: DispatchTarget = Field(
        default="outbox",
        description="outbox (the file), webhook (POST to webhook_url), hubspot or salesforce "
        "(the write-back, docs/sources/).",
    )
    writeback: WriteBackMode = Field(
        default="dry_run",
        description="For hubspot and salesforce: dry_run writes the requests down and calls "
        "nothing; live makes them.",
    )
    webhook_url: str | None = Field(default=None, description="The webhook target's URL.")
    webhook_secret: str | None = Field(default=None, description="HMAC key; environment only.")
    timeout_seconds: float = 10.0
    max_attempts: int = Field(default=5, description="Tries before an action is marked failed.")
    hubspot_access_token: str | None = Field(default=None, description="Environment only.")

    def target(self) -> Target:
        if self.dispatch_target == "hubspot":
            return self._hubspot()
        if self.dispatch_target == "salesforce":
            return self._salesforce()
        if self.dispatch_target == "webhook":
            if not self.webhook_url:
                raise ValueError("the webhook target needs a URL (REVORCH_WEBHOOK_URL)")
            return Webhook(self.webhook_url, self.webhook_secret, self.timeout_seconds)
        return OutboxFile(Path(self.outbox_path))

    def _salesforce(self) -> Target:
        from revorch.sources.salesforce.sync import SalesforceSettings, connect
        from revorch.sources.salesforce.writeback import SalesforceWriteBack

        live = self.writeback == "live"
        client = connect(SalesforceSettings.from_env()) if live else None
        return SalesforceWriteBack(client, OutboxFile(Path(self.outbox_path)), dry_run=not live)

    def _hubspot(self) -> Target:
        from revorch.sources.hubspot import config
        from revorch.sources.hubspot.api import HubSpotApi
        from revorch.sources.hubspot.own_writes import OwnWrites
        from revorch.sources.hubspot.writeback import HubSpotTarget

        api = None
        if self.hubspot_access_token:
            api = HubSpotApi(
                self.hubspot_access_token, config.base_url(), config.limits(), retry_reads=False
            )
        return HubSpotTarget(
            api,
            OwnWrites(config.own_writes_path()),
            dry_run=self.writeback != "live",
            dry_run_path=config.state_dir() / "dry-run.jsonl",
        )

    @property
    def journal(self) -> Path:
        if self.journal_path:
            return Path(self.journal_path)
        return Path(self.outbox_path).parent / "dispatch-journal.sqlite3"
