"""The lead model's backtest on a simulated CRM: it learns the signal, and it trains only on
what was known at the split."""

from datetime import timedelta

import numpy as np
import pytest

from revorch import clock
from revorch.agents.model_backtest import backtest_history, backtest_model
from revorch.agents.offline.history import past_examples


@pytest.fixture(scope="module")
def crm(scoring_crm, tmp_path_factory):
    """A copy of the 4,000-contact CRM (conftest, seed 42), built through the asset graph."""
    conn = scoring_crm.copy("stages", tmp_path_factory.mktemp("crm") / "crm").connect()
    clock.bind(conn, clock.DATA)  # the history's own clock, as it was built on
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def history(crm):
    return past_examples("lead", crm)


@pytest.fixture(scope="module")
def report(history):
    return backtest_history(history)


def test_the_lead_model_learns_the_simulated_signal(report):
    # Measured: AUC 0.836, precision 42.4% (base rate 11.0%), lift 3.8x at 4,000 contacts, seed 42.
    product = report.product
    assert product.auc > 0.75
    assert product.precision_at_top_decile > 2.5 * report.base_rate_test
    assert product.lift_at_top_decile > 2.5
    # Better than always saying the training base rate.
    base_rate_guess = float(np.mean((report.test_labels - report.base_rate_train) ** 2))
    assert product.brier < base_rate_guess


def test_training_stops_a_horizon_before_the_split(history, report):
    horizon = timedelta(days=history.models.lead.outcome.within_days)
    times = history.times.astype("datetime64[us]").astype(object)
    split = report.split
    assert report.n_train == sum(t < split - horizon for t in times)
    assert report.n_test == sum(t >= split for t in times)
    # The contacts created within the horizon before the split are in neither.
    assert report.n_train + report.n_test < history.size
    assert report.n_train > 1_000 and report.n_test > 500
    # About the last 30% of the contacts with final labels are kept for the test.
    assert 0.2 < report.n_test / history.size < 0.45


def test_the_calibration_table_covers_every_test_contact(report):
    assert len(report.calibration) == 10
    assert sum(b.count for b in report.calibration) == report.n_test
    low, high = (
        report.calibration[0],
        max((b for b in report.calibration if b.count >= 20), key=lambda b: b.low),
    )
    assert low.observed_rate < 0.1 < high.observed_rate


def test_an_explicit_split_and_a_readable_report(crm, report):
    earlier = backtest_model("lead", crm, split="2026-01-01")
    assert earlier.split.date().isoformat() == "2026-01-01"
    assert earlier.n_test > report.n_test and earlier.n_train < report.n_train
    text = report.to_text()
    for words in ("AUC", "top-decile", "lift", "Brier", "calibration", "logistic regression"):
        assert words in text
