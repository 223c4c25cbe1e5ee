"""The promotion gate, and the registry it reads, against a real MLflow store (temp dir) and a
real Postgres."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fraud_lib import promotion, registry, store
from fraud_lib.data import generate
from fraud_lib.errors import PromotionConflict, RegistryError
from fraud_lib.schema import FeatureSchema
from fraud_lib.train import train_model

SCHEMA = FeatureSchema()
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frames():
    past = SCHEMA.validate_frame(generate(10, rows_per_day=4000, seed=11, fraud_rate=0.005))
    later = SCHEMA.validate_frame(
        generate(4, rows_per_day=4000, seed=12, fraud_rate=0.005, start_day=10)
    )
    return past, later


@pytest.fixture(scope="module")
def trained(frames):
    past, _ = frames
    return {
        "strong": train_model(past, SCHEMA, test_fraction=0.1),
        "weak": train_model(past, SCHEMA, model_type="lr", test_fraction=0.1),
    }


@pytest.fixture
def gate_settings(settings):
    return replace(settings, min_average_precision=0.01, min_roc_auc=0.5)


def _events(engine, settings):
    return store.model_events(engine, settings.model_name)


def test_first_model_is_promoted_then_better_wins_and_worse_loses(
    gate_settings, pg_engine, frames, trained
):
    s, (_, later) = gate_settings, frames
    v1 = registry.log_model(trained["weak"], s)
    first = promotion.promote_if_better(s, pg_engine, later, v1.version)
    assert first.event == "promoted" and "first champion" in first.reason
    assert registry.alias_version(s) == v1.version

    v2 = registry.log_model(trained["strong"], s)
    better = promotion.promote_if_better(s, pg_engine, later, v2.version)
    assert better.event == "promoted", better.reason
    assert better.champion_version == v1.version
    assert (
        better.challenger_metrics["average_precision"]
        > better.champion_metrics["average_precision"]
    )
    assert registry.alias_version(s) == v2.version

    v3 = registry.log_model(trained["weak"], s)
    worse = promotion.promote_if_better(s, pg_engine, later, v3.version)
    assert worse.event == "rejected" and "does not beat champion" in worse.reason
    assert registry.alias_version(s) == v2.version

    events = _events(pg_engine, s)
    assert [e["event"] for e in events] == ["rejected", "promoted", "promoted"]
    assert events[0]["version"] == v3.version and "does not beat" in events[0]["reason"]
    tags = {v["version"]: v for v in registry.list_versions(s)}
    assert tags[v3.version]["decision"] == "rejected"
    assert tags[v2.version]["previous_champion"] == v1.version
    assert tags[v2.version]["aliases"] == ["champion"]


def test_floors_reject_a_weak_first_model(settings, pg_engine, frames, trained):
    strict = replace(settings, min_average_precision=0.99)
    v1 = registry.log_model(trained["weak"], strict)
    decision = promotion.promote_if_better(strict, pg_engine, frames[1], v1.version)
    assert decision.event == "rejected" and "below the floor" in decision.reason
    assert registry.alias_version(strict) is None


def test_dry_run_records_but_does_not_move(gate_settings, pg_engine, frames, trained):
    v1 = registry.log_model(trained["strong"], gate_settings)
    decision = promotion.promote_if_better(
        gate_settings, pg_engine, frames[1], v1.version, dry_run=True
    )
    assert decision.promote and decision.event == "dry_run"
    assert registry.alias_version(gate_settings) is None
    assert _events(pg_engine, gate_settings)[0]["event"] == "dry_run"


def test_concurrent_alias_change_fails_the_compare_and_set(
    gate_settings, pg_engine, frames, trained
):
    s, later = gate_settings, frames[1]
    v1 = registry.log_model(trained["weak"], s)
    promotion.promote_if_better(s, pg_engine, later, v1.version)
    v2 = registry.log_model(trained["strong"], s)
    decision = promotion.evaluate_challenger(s, later, v2.version)
    assert decision.promote and decision.champion_version == v1.version
    # Someone else promotes another version between our evaluation and our alias move.
    v3 = registry.log_model(trained["weak"], s)
    registry.client(s).set_registered_model_alias(s.model_name, "champion", v3.version)
    with pytest.raises(PromotionConflict, match="re-run the evaluation"):
        promotion.apply_decision(s, pg_engine, decision)
    assert registry.alias_version(s) == v3.version
    assert _events(pg_engine, s)[0]["event"] == "conflict"


def test_rollback_restores_the_previous_champion(gate_settings, pg_engine, frames, trained):
    s, later = gate_settings, frames[1]
    v1 = registry.log_model(trained["weak"], s)
    promotion.promote_if_better(s, pg_engine, later, v1.version)
    v2 = registry.log_model(trained["strong"], s)
    promotion.promote_if_better(s, pg_engine, later, v2.version)
    assert promotion.rollback(s, pg_engine) == (v2.version, v1.version)
    assert registry.alias_version(s) == v1.version
    assert _events(pg_engine, s)[0]["event"] == "rolled_back"
    with pytest.raises(RegistryError, match="no recorded previous champion"):
        promotion.rollback(s, pg_engine)


def test_the_champion_as_its_own_challenger_is_skipped_not_rejected(
    gate_settings, pg_engine, frames, trained
):
    # A retraining run on a window the champion was trained on reuses the champion's version.
    s, later = gate_settings, frames[1]
    v1 = registry.log_model(trained["weak"], s)
    promotion.promote_if_better(s, pg_engine, later, v1.version)
    for options in ({}, {"force": True}, {"dry_run": True}):
        decision = promotion.promote_if_better(s, pg_engine, later, v1.version, **options)
        assert decision.event == "skipped" and not decision.promote, options
        assert decision.reason == f"no new challenger: version {v1.version} is already the champion"
    assert registry.alias_version(s) == v1.version
    events = _events(pg_engine, s)
    assert [e["event"] for e in events] == ["skipped", "skipped", "skipped", "promoted"]
    assert {e["version"] for e in events} == {v1.version}
    # the champion's own record still says why it is the champion
    tags = {v["version"]: v for v in registry.list_versions(s)}[v1.version]
    assert tags["decision"] == "promoted" and "first champion" in tags["reason"]


def test_rollback_to_the_champion_itself_is_refused(gate_settings, pg_engine, frames, trained):
    s, later = gate_settings, frames[1]
    v1 = registry.log_model(trained["weak"], s)
    promotion.promote_if_better(s, pg_engine, later, v1.version)
    events = _events(pg_engine, s)
    with pytest.raises(RegistryError, match=f"version {v1.version} is already the champion"):
        promotion.rollback(s, pg_engine, to_version=v1.version)
    for hostile in ("abc", "-1", "0", "1.5", "99999999999", "\udcff", "1" * 5000, ""):
        with pytest.raises(RegistryError, match="a version is a whole number"):
            promotion.rollback(s, pg_engine, to_version=hostile)
    assert _events(pg_engine, s) == events
    assert registry.list_versions(s)[0]["decision"] == "promoted"


def test_a_champion_on_another_schema_is_replaced_only_when_forced(
    gate_settings, pg_engine, frames, trained
):
    s, (past, later) = gate_settings, frames
    narrow = replace(SCHEMA, features=SCHEMA.features[:5])
    v1 = registry.log_model(train_model(past, narrow, model_type="lr", test_fraction=0.1), s)
    promotion.promote_if_better(s, pg_engine, later, v1.version)
    v2 = registry.log_model(trained["strong"], s)
    decision = promotion.promote_if_better(s, pg_engine, later, v2.version)
    assert decision.event == "rejected" and "input schema differs" in decision.reason
    assert decision.champion_metrics is not None  # compared on the same window first
    assert registry.alias_version(s) == v1.version
    forced = promotion.promote_if_better(s, pg_engine, later, v2.version, force=True)
    assert forced.event == "promoted" and registry.alias_version(s) == v2.version


def test_evaluation_window_must_be_held_out(gate_settings, pg_engine, frames, trained):
    v1 = registry.log_model(trained["strong"], gate_settings)
    with pytest.raises(RegistryError, match="overlaps the challenger's training data"):
        promotion.evaluate_challenger(gate_settings, frames[0], v1.version)


def test_loaded_model_carries_schema_threshold_and_scores_like_training(gate_settings, trained):
    result = trained["strong"]
    ref = registry.log_model(result, gate_settings)
    loaded = registry.load_version(gate_settings, ref.version)
    assert loaded.schema == SCHEMA
    assert loaded.threshold == pytest.approx(result.threshold)
    sample = result.reference.head(50)
    assert loaded.score(sample) == pytest.approx(sample["score"].to_numpy())
    reference = registry.load_reference(gate_settings, ref.version)
    assert len(reference) == len(result.reference)
