"""Training: time-ordered splits, model builders, quality floors and invariances."""

from __future__ import annotations

import numpy as np
import pytest

from fraud_lib.data import generate
from fraud_lib.errors import ConfigError, DataError
from fraud_lib.evaluate import compute_metrics
from fraud_lib.features import predict_scores
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import build_model, time_split, train_model

SCHEMA = FeatureSchema()


@pytest.fixture(scope="module")
def history():
    return SCHEMA.validate_frame(generate(12, rows_per_day=5000, seed=3, fraud_rate=0.004))


def test_time_split_never_leaks_the_future(history):
    train, val, test = time_split(history.sample(frac=1, random_state=0), SCHEMA, 0.2, 0.15)
    assert len(train) + len(val) + len(test) == len(history)
    assert train["Time"].max() <= val["Time"].min()
    assert val["Time"].max() <= test["Time"].min()
    assert len(test) == pytest.approx(0.2 * len(history), abs=1)


def test_bad_options_are_refused(history):
    with pytest.raises(ConfigError, match="unknown model"):
        build_model(SCHEMA, "xgb")
    with pytest.raises(ConfigError, match="unknown resampling"):
        build_model(SCHEMA, "hgb", "oversample-everything")
    with pytest.raises(ConfigError, match="at least 10% for training"):
        time_split(history, SCHEMA, 0.5, 0.45)


def test_too_few_frauds_is_a_clear_error(history):
    legit_only = history[history["Class"] == 0].head(3000)
    with pytest.raises(DataError, match="fraud"):
        train_model(legit_only, SCHEMA)


@pytest.mark.slow
def test_default_model_beats_chance_and_linear_baseline(history):
    hgb = train_model(history, SCHEMA)
    lr = train_model(history, SCHEMA, model_type="lr")
    prevalence = history["Class"].mean()
    assert hgb.metrics["average_precision"] > 10 * prevalence
    assert hgb.metrics["average_precision"] > lr.metrics["average_precision"]
    assert hgb.metrics["roc_auc"] > 0.9
    assert 0 < hgb.threshold < 1
    assert hgb.params["n_iter"] < 500  # early stopping on the time-ordered slice kicked in
    assert {"score", "Class", "Time"} <= set(hgb.reference.columns)
    assert hgb.n_train + hgb.n_val + hgb.n_test == len(history)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_type", "resample"), [("hgb", "smote"), ("rf", "undersample"), ("lr", "none")]
)
def test_every_model_and_resampler_trains(history, model_type, resample):
    result = train_model(history, SCHEMA, model_type=model_type, resample=resample)
    assert result.metrics["roc_auc"] > 0.75
    # Resampling happens only while fitting: scoring returns one score per input row.
    scores = predict_scores(result.model, history.head(37), SCHEMA)
    assert scores.shape == (37,) and np.all((scores >= 0) & (scores <= 1))


def test_scores_do_not_depend_on_batch_composition(history):
    result = train_model(history.head(40_000), SCHEMA, test_fraction=0.1)
    batch = history.tail(200)
    together = predict_scores(result.model, batch, SCHEMA)
    alone = np.array(
        [predict_scores(result.model, batch.iloc[[i]], SCHEMA)[0] for i in range(0, 200, 20)]
    )
    np.testing.assert_allclose(together[::20], alone, rtol=1e-12)
    shuffled = batch.sample(frac=1, random_state=1)
    np.testing.assert_allclose(
        predict_scores(result.model, shuffled, SCHEMA),
        together[[batch.index.get_loc(i) for i in shuffled.index]],
        rtol=1e-12,
    )


def test_metrics_reported_are_those_of_the_test_slice(history):
    result = train_model(history, SCHEMA, test_fraction=0.25)
    _, _, test = time_split(history, SCHEMA, 0.25, 0.15)
    expected = compute_metrics(
        test["Class"], predict_scores(result.model, test, SCHEMA), result.threshold
    )
    assert result.metrics["average_precision"] == pytest.approx(expected["average_precision"])
    assert result.metrics["n_test"] == len(test)
