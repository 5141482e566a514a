"""Features and outcomes declared in config/agents.yaml (``models:``): validated when loaded,
read by the models and their backtest; stale open leads are never fast-tracked; a CRM with
no companies or owners runs the whole pipeline."""

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from conftest import CountingConnection, event, ingest_and_stage
from revorch import clock
from revorch.agents import registry
from revorch.agents.config import DEFAULT_PATH, AgentsConfigError, load_agents_config
from revorch.agents.features import DEFAULT_FEATURES, ModelsConfig
from revorch.agents.model_backtest import backtest_model
from revorch.agents.offline import DealModel, LeadModel, OfflineTier, RenewalModel, lead_inputs
from revorch.agents.offline.deal_model import labelled_deals
from revorch.agents.offline.lead_model import intent_features, labelled_leads, lead_examples
from revorch.agents.offline.renewal_model import labelled_renewals
from revorch.agents.registry import id_slices, input_clock, slice_reader
from revorch.landing import LandingZone
from revorch.lifecycle.config import load_lifecycle_config
from revorch.simulator import SimulationConfig, simulate_history

SHIPPED = yaml.safe_load(DEFAULT_PATH.read_text())
LEADS = "lead_qualification"
RARE = {"reached": ["opportunity", "customer"], "within_days": 30}  # few positives

# A mapping whose contacts carry one custom property, as `revorch import` would land it.
MAPPING = """
source: test_export
files:
  contacts:
    match: "*contact*.csv"
    object_type: contact
    id: {column: Record ID}
    occurred_at: {column: Last Modified Date}
    fields:
      created_at: Create Date
    custom:
      demo_score: {column: Demo Score, type: number, optional: true}
      newsletter: {column: Newsletter, type: boolean, optional: true}
"""


def config_with(models: dict) -> str:
    return yaml.safe_dump({**SHIPPED, "models": models})


def models_with(mapping: Path, **sections) -> ModelsConfig:
    return load_agents_config(text=config_with({"mappings": [str(mapping)], **sections})).models


@pytest.fixture(scope="module")
def mapping(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mapping") / "test_export.yaml"
    path.write_text(MAPPING)
    return path


# -- validation --------------------------------------------------------------------------------


def test_the_defaults_are_the_fixed_lists_the_models_always_read():
    models = load_agents_config().models
    assert models == ModelsConfig()
    spec = intent_features(models)
    assert spec.log_numeric == (
        "employees",
        "annual_revenue",
        "emails_sent",
        "emails_opened",
        "emails_replied",
        "web_visits",
        "pricing_visits",
        "form_fills",
        "meetings",
        "calls",
    )
    assert spec.categorical == ("lead_source", "industry", "tier", "job_title", "stage")
    assert spec.numeric == () and spec.grouped == ()
    assert models.lead.outcome.within_days == 90 and models.lead.scoring_days == 14
    assert [f.name for f in DEFAULT_FEATURES["renewal"]][:2] == ["utilization", "usage_change"]


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"lead": {"features": [{"name": "employes"}]}}, "not a column of the lead inputs"),
        (
            {"lead": {"features": [{"name": "x", "property": "contact.demo_scor"}]}},
            "neither a contact field of the state store nor a custom property",
        ),
        (
            {"lead": {"features": [{"name": "x", "property": "ticket.subject"}]}},
            "reads properties of contact, company, not ticket",
        ),
        (
            {"lead": {"features": [{"name": "b", "activities": {"types": ["x"], "days": 0}}]}},
            "a window is a positive number of days",
        ),
        (
            {
                "lead": {
                    "features": [
                        {
                            "name": "b",
                            "activities": {"types": ["x"], "days": 30, "start": "created"},
                        }
                    ]
                }
            },
            "must end by the scoring point",
        ),
        (
            {"lead": {"features": [{"name": "age", "derived": "record_age_days"}]}},
            "record_age_days means nothing for a lead model",
        ),
        ({"lead": {"features": [{"name": "stage", "derived": "days_since_last_touch"}]}}, "key"),
        ({"lead": {"outcome": {"within_days": 7}}}, "ends before the scoring point"),
        ({"renewal": {"outcome": {"renewed": ["churned"]}}}, "both churned and renewed"),
        ({"mappings": ["no_such_mapping"]}, "mapping not found"),
    ],
)
def test_a_bad_declaration_is_refused_when_the_config_loads(models, message, mapping):
    with pytest.raises(AgentsConfigError, match=message) as refused:
        load_agents_config(text=config_with({"mappings": [str(mapping)], **models}))
    assert "models" in str(refused.value)  # it names the key


def test_a_custom_property_is_known_only_through_a_mapping(mapping):
    declared = {"lead": {"features": [{"name": "demo", "property": "contact.demo_score"}]}}
    with pytest.raises(AgentsConfigError, match=r"list them under models\.mappings"):
        load_agents_config(text=config_with(declared))
    models = models_with(mapping, **declared)
    assert models.feature_types("lead") == {"demo": "number"}
    # The shipped HubSpot mapping types its custom properties too.
    hubspot = {
        "mappings": ["hubspot_export"],
        "lead": {"features": [{"name": "views", "property": "contact.page_views"}]},
    }
    assert load_agents_config(text=config_with(hubspot)).models.feature_types("lead") == {
        "views": "integer"
    }


def test_every_models_block_in_the_docs_is_a_valid_declaration():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "agents.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "models:" in b]
    assert len(blocks) == 3  # the overview, HubSpot's and Salesforce's standard fields
    for block in blocks:
        models = load_agents_config(text=config_with(yaml.safe_load(block)["models"])).models
        assert models != ModelsConfig()


# -- on a simulated CRM ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crm(scoring_crm, tmp_path_factory):
    """A copy of the 4,000-contact CRM (conftest, seed 42), with a custom property on every
    contact: ``demo_score``, set a day after creation, high for those who later reached SQL.
    Written to the change log as an import of the mapping above would write it."""
    conn = scoring_crm.copy("stages", tmp_path_factory.mktemp("crm") / "crm").connect()
    clock.bind(conn, clock.DATA)
    conn.execute(
        """
        INSERT INTO change_log
        SELECT 'test_export:demo:' || c.id, 999, 'test-batch', 'test_export', 'contact', c.id,
               'upsert', coalesce(c.created_at, c._first_seen_at) + INTERVAL 1 DAY, now(),
               json_object('demo_score',
                   -- a noisy signal: the hash gives each contact its own noise, repeatably
                   (CASE WHEN q.id IS NULL THEN 0 ELSE 1.5 END) + (hash(c.id) % 1000) / 500.0,
                   'newsletter', hash(c.id) % 2 = 0)
        FROM contacts AS c
        LEFT JOIN (SELECT DISTINCT entity_id AS id FROM stages.stage_transitions
                   WHERE entity_type = 'contact' AND to_stage = 'sql') AS q ON q.id = c.id
        """
    )
    # And one set 30 days after creation, long after the scoring point.
    conn.execute(
        """
        INSERT INTO change_log
        SELECT 'test_export:late:' || id, 999, 'test-batch', 'test_export', 'contact', id,
               'upsert', coalesce(created_at, _first_seen_at) + INTERVAL 30 DAY, now(),
               json_object('demo_score', 5)
        FROM contacts
        """
    )
    yield conn
    conn.close()


def test_a_declared_custom_property_changes_the_inputs_and_the_backtest(crm, mapping):
    shipped = ModelsConfig()
    declared = models_with(
        mapping,
        lead={
            "features": [
                "defaults",
                {"name": "demo", "property": "contact.demo_score"},
                {"name": "newsletter", "property": "contact.newsletter"},
            ]
        },
    )
    inputs = lead_inputs(crm, models=declared)[:50]
    assert all("demo" in row and "newsletter" in row for row in inputs)
    assert {row["newsletter"] for row in inputs} == {0, 1}  # booleans as 0/1
    assert "demo" not in lead_inputs(crm, models=shipped)[0]

    before = backtest_model("lead", crm, models=shipped).product
    after = backtest_model("lead", crm, models=declared).product
    model = LeadModel.train(crm, models=declared)
    assert "demo" in model.intent.coefficients and model.intent.coefficients["demo"] > 0
    assert model.version != LeadModel.train(crm, models=shipped).version
    # The property carries signal the fixed list does not: the backtest sees it.
    assert after.auc > before.auc + 0.03, (before.auc, after.auc)


def test_every_lead_read_in_slices_of_staged_passes_equals_reading_the_tables(
    crm, mapping, monkeypatch
):
    """A first run reads every open lead in id slices: the SQL features of all of them are
    written once to a file beside DuckDB's spill files, each slice reads its own from it."""
    declared = models_with(
        mapping,
        lead={
            "features": ["defaults", {"name": "demo", "property": "contact.demo_score"}],
            "stale": "expire",
        },
    )
    spill = Path(crm.execute("SELECT current_setting('temp_directory')").fetchone()[0])
    direct = lead_inputs(crm, models=declared)
    slices = id_slices(crm, LEADS, None, 97)
    lifecycle = load_lifecycle_config()
    monkeypatch.setattr(registry, "STAGE_SLICES", 3)  # a pass per 3 slices: several passes
    with slice_reader(crm, LEADS, lifecycle, declared, None, slices) as read:
        staged = [row for ids in slices for row in read(crm, ids)]
        passes = list(spill.glob("revorch-lead_qualification-*/inputs-*.parquet"))
        assert len(passes) == -(-len(slices) // 3) > 1, passes  # a file per pass
        assert not list(spill.glob("revorch-lead_qualification-*/sources"))
    assert not list(spill.glob("revorch-lead_qualification-*"))
    assert len(slices) > 3 and len(direct) > 100
    assert all("demo" in row for row in direct) and any(row["recent_activity"] for row in direct)
    assert [r["id"] for r in staged] == [r["id"] for r in direct]
    assert staged == direct


def test_the_staging_passes_read_the_change_log_as_often_however_many_they_are(crm, monkeypatch):
    """Each pass read the change log and the activities for its leads: ten passes of a
    million leads scanned a ten-million-contact store ten times. The sources are spread over
    the passes in one scan, so the statements that read the change log do not grow with the
    passes, and the inputs are the same."""
    slices = id_slices(crm, LEADS, None, 97)
    lifecycle, models = load_lifecycle_config(), ModelsConfig()
    read_through = {}
    for per_pass in (2, 4):  # several passes either way, twice as many with 2
        monkeypatch.setattr(registry, "STAGE_SLICES", per_pass)
        counting = CountingConnection(crm, "change_log")
        with slice_reader(counting, LEADS, lifecycle, models, None, slices) as read:
            inputs = [row for ids in slices for row in read(counting, ids)]
        read_through[per_pass] = (counting.count, inputs)
    assert len(slices) > 8 and len(read_through[2][1]) > 100
    assert read_through[2][0] == read_through[4][0], read_through[2][0]
    assert read_through[2][1] == read_through[4][1]


def test_a_property_is_read_as_of_the_scoring_point_unless_declared_latest(crm, mapping):
    def demo(as_of):
        feature = {"name": "demo", "property": "contact.demo_score", "as_of": as_of}
        models = models_with(mapping, lead={"features": ["defaults", feature]})
        return lead_examples(crm, models=models)["demo"].to_list()

    known, latest = demo("scoring_point"), demo("latest")
    assert len(known) == len(latest) > 1000
    assert max(known) < 5 and set(latest) == {5}  # the day-30 value is the future on day 14


def test_rare_categories_share_one_other_column_learnt_in_the_training_fold(crm):
    features = [f.model_dump(exclude_defaults=True) for f in DEFAULT_FEATURES["lead"]]
    for feature in features:
        if feature["name"] == "job_title":
            feature["max_categories"] = 3
    models = load_agents_config(text=config_with({"lead": {"features": features}})).models
    model = LeadModel.train(crm, models=models)
    titles = [c for c in model.intent.columns if c.startswith("job_title=")]
    assert len(titles) == 4 and "job_title=(other)" in titles
    # It survives JSON, and scores a title never seen as "(other)".
    copy = LeadModel.from_json(model.to_json())
    row = {**lead_inputs(crm)[0], "job_title": "Chief Unicorn Officer"}
    assert copy.predict([row]) == model.predict([row])
    assert model.intent._encode_row(row)[model.intent.columns.index("job_title=(other)")] == 1.0
    assert model.predict_frame(lead_examples(crm, models=models)).shape[0] > 0


def test_activity_windows_and_derived_features_are_counted_by_the_scoring_point(crm):
    models = load_agents_config(
        text=config_with(
            {
                "lead": {
                    "features": [
                        {"name": "stage", "encode": "category"},
                        {
                            "name": "replies_recent",
                            "activities": {"types": ["email_replied"], "days": 7},
                        },
                        {
                            "name": "early_pricing",
                            "activities": {
                                "types": ["web_visit"],
                                "days": 14,
                                "start": "created",
                                "url_contains": "/pricing",
                            },
                        },
                        {"name": "quiet_days", "derived": "days_since_last_touch"},
                    ]
                }
            }
        )
    ).models
    examples, _ = labelled_leads(crm, models=models)
    shipped, _ = labelled_leads(crm)
    # A window from creation to the scoring point counts what the fixed column counts.
    assert examples["early_pricing"].to_list() == shipped["pricing_visits"].to_list()
    assert examples["replies_recent"].sum() <= shipped["emails_replied"].sum()
    assert examples["quiet_days"].min() >= 0 and examples["quiet_days"].max() <= 14
    # A window ending at the scoring point moves with the clock: the agent rebuilds on any move.
    assert input_clock("lead_qualification", models) == "instant"
    assert input_clock("lead_qualification", ModelsConfig()) == "week"  # the stale flag


def test_the_lead_model_trains_on_a_fixed_sample_of_at_most_max_examples(crm, monkeypatch):
    from revorch.agents.offline import lead_model

    everyone, _ = labelled_leads(crm)
    monkeypatch.setattr(lead_model, "MAX_EXAMPLES", 500)
    sample, counts = labelled_leads(crm)
    again, _ = labelled_leads(crm)
    assert counts.examples + counts.dropped <= 500 < everyone.height
    assert sample["id"].to_list() == again["id"].to_list()  # the same ones every time
    assert set(sample["id"]) <= set(everyone["id"])
    whole = everyone.filter(everyone["id"].is_in(sample["id"].implode()))
    assert whole.equals(sample)  # each example as it is when every one is read


def test_a_declared_outcome_changes_the_labels_and_says_what_it_kept_and_dropped(crm):
    shipped, counts = labelled_leads(crm)
    assert counts.positives == shipped["label"].sum() and counts.examples == shipped.height
    assert counts.dropped > 0  # already SQL on day 14: nothing left to predict
    short = load_agents_config(text=config_with({"lead": {"outcome": {"within_days": 30}}})).models
    early, early_counts = labelled_leads(crm, models=short)
    # A shorter horizon calls the later converters negative, and says how many.
    assert early_counts.positives < counts.positives
    assert early_counts.late_positives > counts.late_positives
    assert early_counts.late_positives > 0
    labels = dict(zip(shipped["id"], shipped["label"], strict=True))
    flipped = [
        i for i, label in zip(early["id"], early["label"], strict=True) if labels.get(i) != label
    ]
    assert flipped and all(labels[i] == 1 for i in flipped if i in labels)
    # "Ever": no horizon, so nobody is called negative for being late.
    ever = load_agents_config(text=config_with({"lead": {"outcome": {"within_days": None}}}))
    _, ever_counts = labelled_leads(crm, models=ever.models)
    assert ever_counts.late_positives == 0 and ever_counts.positives >= counts.positives

    # The counts reach the model's metadata and the backtest report, with a warning when few
    # positives are left (measured: 146 opportunities within 30 days in all, seed 42).
    rare = load_agents_config(text=config_with({"lead": {"outcome": RARE}})).models
    report = backtest_model("lead", crm, models=rare)
    assert report.test_labels.sum() < 100
    assert any(w.startswith("test: only") for w in report.outcome_warnings)
    # The counts are the whole history's: the training and test periods and the gap between.
    assert report.counts.examples > report.n_train + report.n_test
    assert report.counts.positives >= report.train_labels.sum() + report.test_labels.sum()
    text = report.to_text()
    assert "reached opportunity/customer within 30 days" in text and "WARNING" in text
    assert "left out" in text
    # None at all: training says so, with the counts.
    none = {"reached": ["customer"], "within_days": 30}
    with pytest.raises(ValueError, match="0 positives"):
        LeadModel.train(
            crm, models=load_agents_config(text=config_with({"lead": {"outcome": none}})).models
        )


def test_a_changed_declaration_retrains_the_model_and_rebuilds_the_inputs(crm, mapping):
    from revorch.agents import incremental
    from revorch.agents.models import offline_tier
    from revorch.agents.registry import agent_specs, inputs_to_decide
    from revorch.lifecycle.config import load_lifecycle_config

    settings, lifecycle = load_agents_config().agents["lead_qualification"], load_lifecycle_config()
    declared = models_with(
        mapping, lead={"features": ["defaults", {"name": "demo", "property": "contact.demo_score"}]}
    )

    def plan(models):
        spec = agent_specs(offline_tier(crm, config=lifecycle, models=models))["lead_qualification"]
        return spec, *inputs_to_decide(crm, spec, settings, lifecycle, models=models)

    spec, items, scope = plan(ModelsConfig())
    incremental.save(crm, "lead_qualification", scope.seen)
    assert plan(ModelsConfig())[2].why == "unchanged"
    declared_spec, items, scope = plan(declared)
    assert scope.why == "version_changed" and all("demo" in item for item in items)
    assert declared_spec.offline_version != spec.offline_version  # trained again, on the new list


def test_deal_and_renewal_outcomes_are_declared_and_counted(crm):
    closed, closed_counts = labelled_deals(crm)
    won_fast = load_agents_config(
        text=config_with({"deal": {"outcome": {"won_within_days": 30}}})
    ).models
    _, horizon_counts = labelled_deals(crm, models=won_fast)
    assert closed_counts.examples == len(closed) and closed_counts.late_positives == 0
    # With a horizon, a deal won after it is a loss, and open deals that old count too.
    assert horizon_counts.late_positives > 0
    assert horizon_counts.positives < closed_counts.positives
    assert DealModel.train(crm, models=won_fast).version != DealModel.train(crm).version

    rows, counts = labelled_renewals(crm)
    assert counts.positives == sum(r["churned"] for r in rows) > 0
    tenure = load_agents_config(
        text=config_with(
            {
                "renewal": {
                    "features": [
                        "defaults",
                        {"name": "tenure", "derived": "tenure_days"},
                        {"name": "age", "derived": "record_age_days"},
                    ]
                }
            }
        )
    ).models
    with_tenure, _ = labelled_renewals(crm, models=tenure)
    assert all(r["tenure"] >= r["age"] >= 0 for r in with_tenure)
    model = RenewalModel.train(crm, models=tenure)
    assert "tenure" in model.model.coefficients


def test_the_backtest_command_warns_when_few_positives_are_left(scoring_crm, tmp_path):
    home = scoring_crm.copy("stages", tmp_path / "home")
    config = tmp_path / "agents.yaml"
    config.write_text(config_with({"lead": {"outcome": RARE}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REVORCH_", "DAGSTER_"))}
    backtest = subprocess.run(
        [sys.executable, "-m", "revorch.cli", "backtest"],
        cwd=tmp_path,
        env={**env, **home.env(), "REVORCH_AGENTS_CONFIG": str(config), "CI": "true"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert backtest.returncode == 0, backtest.stderr
    assert "Lead model backtest: reached opportunity/customer within 30 days" in backtest.stdout
    assert "  outcome: " in backtest.stdout and " positives, " in backtest.stdout
    assert "warning: lead model test: only" in backtest.stderr


# -- stale open leads --------------------------------------------------------------------------

T0 = datetime(2025, 1, 1, 9, 0, tzinfo=UTC)


def at(days: float) -> str:
    return (T0 + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_stale_open_lead_is_never_fast_tracked(conn, db_path, zone, crm):
    events = [
        event("s1", "company", "co-1", at(0), industry="software", tier="enterprise"),
        # Created 500 days before the data clock and still open: an SQL, busy early on.
        event("s2", "contact", "c-old", at(0), company_id="co-1", created_at=at(0)),
        event("s3", "contact", "c-old", at(3), lifecycle_stage="salesqualifiedlead"),
        # A fresh SQL, created 10 days before the data clock.
        event("s4", "contact", "c-new", at(490), company_id="co-1", created_at=at(490)),
        event("s5", "contact", "c-new", at(492), lifecycle_stage="salesqualifiedlead"),
        *[
            event(
                f"s-a{i}",
                "activity",
                f"a-{i}",
                at(1 + i / 10),
                contact_id="c-old",
                activity_type="meeting",
                activity_at=at(1 + i / 10),
            )
            for i in range(5)
        ],
        event("s9", "owner", "own-1", at(500), role="ae"),  # the data clock: day 500
    ]
    zone.write_events("test", events)
    ingest_and_stage(db_path, zone, clock_setting=clock.DATA)

    rows = {row["id"]: row for row in lead_inputs(conn)}
    assert rows["c-old"]["stale"] and not rows["c-new"]["stale"]
    tier = OfflineTier.train(crm)  # a model trained elsewhere scores these leads too
    for judge in (tier, OfflineTier()):  # the model, and the rules without one
        old, new = judge.lead_qualification(rows["c-old"]), judge.lead_qualification(rows["c-new"])
        assert old.next_action == "nurture" and "stale" in old.reasons[0]
        assert new.next_action == "fast_track_to_sales"  # already sales-qualified, and fresh
    # Expired instead of flagged: not scored at all.
    expire = load_agents_config(text=config_with({"lead": {"stale": "expire"}})).models
    assert [row["id"] for row in lead_inputs(conn, models=expire)] == ["c-new"]
    never = load_agents_config(text=config_with({"lead": {"stale_after_days": None}})).models
    assert not any(row["stale"] for row in lead_inputs(conn, models=never))


def test_no_stale_lead_of_the_simulated_crm_is_fast_tracked(crm):
    tier = OfflineTier.train(crm)
    inputs = lead_inputs(crm)
    stale = [row for row in inputs if row["stale"]]
    assert stale, "the simulated CRM has leads open for over a year"
    assert all(tier.lead_qualification(row).next_action == "nurture" for row in stale)


# -- a CRM with no companies or owners ---------------------------------------------------------


def test_a_crm_with_no_companies_or_owners_runs_the_whole_pipeline(in_empty_folder, monkeypatch):
    from resources import default_resources
    from revorch.definitions import materialize

    home = in_empty_folder / "home"
    simulated = LandingZone(in_empty_folder / "simulated").ensure()
    simulate_history(simulated, SimulationConfig(contacts=300, seed=3))
    kept = []
    for batch in sorted(simulated.incoming_dir.glob("*.ndjson")):
        for line in batch.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the simulator's malformed lines
            if isinstance(record, dict) and record.get("object_type") not in ("company", "owner"):
                kept.append(record)
    assert kept and not any(e.get("object_type") == "company" for e in kept)
    monkeypatch.setenv("REVORCH_HOME", str(home))
    monkeypatch.setenv("REVORCH_CLOCK", clock.DATA)
    LandingZone(home / "landing").ensure().write_events("b2c", kept)

    with dg.instance_for_test() as instance:
        result = materialize(
            dg.AssetSelection.all(), resources=default_resources(), instance=instance
        )
    assert result.success
    done = {
        "/".join(e.asset_key.path): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }
    assert {"agents/offline_models", "agents/lead_qualification", "agents/deal_risk"} <= set(done)
    trained = done["agents/offline_models"]
    # A small CRM: the outcome keeps few positives, and the run metadata says so.
    assert (
        trained["lead/outcome/positives"] < 100 and "positives" in trained["lead/outcome/warning"]
    )
