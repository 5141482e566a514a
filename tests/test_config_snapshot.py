"""A run reads the config files once when it starts: an edit while it runs waits for the next
run, and the run's tags name the content it used."""

import shutil

import dagster as dg
import yaml

from resources import AgentsConfigResource, GovernanceResource, LifecycleConfigResource
from resources.config_snapshot import TAG_PREFIX, content_hash
from revorch.config_file import CONFIG_DIR


def _edit(path, change) -> None:
    content = yaml.safe_load(path.read_text())
    change(content)
    path.write_text(yaml.safe_dump(content))


def test_a_config_edit_during_a_run_waits_for_the_next_run(tmp_path):
    for name in ("lifecycle.yaml", "agents.yaml", "policy.yaml"):
        shutil.copy(CONFIG_DIR / name, tmp_path / name)
    original = {
        name: (tmp_path / name).read_text()
        for name in ("lifecycle.yaml", "agents.yaml", "policy.yaml")
    }
    seen: list[tuple] = []

    def read(lifecycle, agents, governance) -> tuple:
        config = agents.load()
        return (
            lifecycle.load().accounts.renewal_window_days,
            config.limits.max_retries,
            governance.policy().model_dump_json(),
        )

    @dg.asset
    def first_step(
        lifecycle: LifecycleConfigResource,
        agents: AgentsConfigResource,
        governance: GovernanceResource,
    ) -> None:
        seen.append(read(lifecycle, agents, governance))
        # A person edits every file while the run goes on.
        _edit(tmp_path / "lifecycle.yaml", lambda c: c["accounts"].update(renewal_window_days=7))
        _edit(tmp_path / "agents.yaml", lambda c: c["limits"].update(max_retries=0))
        _edit(tmp_path / "policy.yaml", lambda c: c.update(c))  # rewritten: same rules, new text

    @dg.asset(deps=[first_step])
    def later_step(
        lifecycle: LifecycleConfigResource,
        agents: AgentsConfigResource,
        governance: GovernanceResource,
    ) -> None:
        seen.append(read(lifecycle, agents, governance))

    resources = {
        "lifecycle": LifecycleConfigResource(path=str(tmp_path / "lifecycle.yaml")),
        "agents": AgentsConfigResource(path=str(tmp_path / "agents.yaml")),
        "governance": GovernanceResource(
            policy_path=str(tmp_path / "policy.yaml"),
            audit_anchor_path=str(tmp_path / "anchors.jsonl"),
        ),
    }
    with dg.DagsterInstance.ephemeral() as instance:
        run = dg.materialize([first_step, later_step], resources=resources, instance=instance)
        tags = instance.get_run_by_id(run.run_id).tags
        assert seen[0] == seen[1]  # the later step saw the files as the run started
        assert seen[0][:2] != (7, 0)
        for name, text in original.items():
            assert tags[TAG_PREFIX + name] == content_hash(text)

        dg.materialize([later_step], resources=resources, instance=instance)
        assert seen[2][:2] == (7, 0)  # the next run reads the edited files
        next_tags = instance.get_run_by_id(instance.get_runs(limit=1)[0].run_id).tags
        assert next_tags[TAG_PREFIX + "lifecycle.yaml"] != tags[TAG_PREFIX + "lifecycle.yaml"]
