from __future__ import annotations

import json
import math

import numpy as np
import pytest

from serve_app.config import ExperimentSettings, TrafficSettings
from serve_app.errors import InvalidInput
from serve_app.experiments.arms import ArmStats
from serve_app.experiments.experiment import Experiment
from serve_app.experiments.sequential import SequentialTest, confidence_radius, mixture_statistic
from serve_app.experiments.split import TrafficPolicy, unit_interval
from serve_app.telemetry import LATENCY_WINDOW

KEYS = [f"user-{i}" for i in range(20_000)]

# Simulations: the null holds the false-promotion rate, the power run the detection rate.
SIMULATED_RUNS = 300
NULL_SAMPLES_PER_ARM = 20_000
BASE_RATE, LIFTED_RATE = 0.05, 0.06  # a 20% relative lift on a 5% conversion rate
POWER_SAMPLES_PER_ARM = 20_000
"""With the defaults (mixture_sd 0.02, alpha 0.05, min_samples_per_arm 200), 5% vs 6% is promoted
within this many outcomes per arm in ~93% of runs (80% is reached near 14,000; measured over 1,500
runs). mixture_sd 0.01, the effect itself, needs ~7% fewer samples here but ~25% more for a 2-4
point effect: 0.02 stays the default."""


def split_share(policy: TrafficPolicy, keys: list[str]) -> float:
    return sum(policy.assign(k).arm == "challenger" for k in keys) / len(keys)


def sigma(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# ---------------------------------------------------------------------------- traffic split


def test_unit_interval_is_a_fixed_hash_not_pythons_hash():
    # Pinned values: every router replica, on any machine, under any PYTHONHASHSEED, agrees.
    assert unit_interval("user-42", "fraud") == pytest.approx(0.3012581604744382, abs=0)
    assert unit_interval("user-42", "fraud") != unit_interval("user-42", "churn")
    values = np.array([unit_interval(k, "fraud") for k in KEYS])
    assert values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 4 * math.sqrt(1 / 12 / len(KEYS))


def test_challenger_share_matches_weight():
    traffic = TrafficSettings(champion=1, challenger=2, challenger_weight=0.05)
    share = split_share(TrafficPolicy(traffic, salt="fraud"), KEYS)
    assert abs(share - 0.05) < 4 * sigma(0.05, len(KEYS))


def test_weight_edges():
    assert split_share(TrafficPolicy(TrafficSettings(champion=1, challenger=2), salt="m"), KEYS[:2000]) == 0
    full = TrafficSettings(champion=1, challenger=2, challenger_weight=1.0)
    assert split_share(TrafficPolicy(full, salt="m"), KEYS[:2000]) == 1
    assert TrafficPolicy(full, salt="m").assign("k").version == 2


def test_assignment_is_sticky_across_policy_objects():
    traffic = TrafficSettings(champion=1, challenger=2, challenger_weight=0.3, shadows=[3], shadow_fraction=0.2)
    first = [TrafficPolicy(traffic, salt="fraud").assign(k) for k in KEYS[:5000]]
    again = [TrafficPolicy(traffic, salt="fraud").assign(k) for k in KEYS[:5000]]
    assert first == again
    assert {a.arm for a in first} == {"champion", "challenger"}


def test_raising_the_weight_never_moves_a_challenger_key_back():
    low = TrafficPolicy(TrafficSettings(champion=1, challenger=2, challenger_weight=0.05), salt="fraud")
    high = TrafficPolicy(TrafficSettings(champion=1, challenger=2, challenger_weight=0.10), salt="fraud")
    low_arms = [low.assign(k).arm for k in KEYS]
    high_arms = [high.assign(k).arm for k in KEYS]
    moved_back = sum(a == "challenger" and b == "champion" for a, b in zip(low_arms, high_arms))
    assert moved_back == 0
    assert abs(high_arms.count("challenger") / len(KEYS) - 0.10) < 4 * sigma(0.10, len(KEYS))


def test_shadow_sampling_share_and_independence_from_the_arm():
    traffic = TrafficSettings(champion=1, challenger=2, challenger_weight=0.5, shadows=[3, 4], shadow_fraction=0.1)
    assignments = [TrafficPolicy(traffic, salt="fraud").assign(k) for k in KEYS]
    mirrored = [a for a in assignments if a.shadows]
    assert {a.shadows for a in assignments} == {(), (3, 4)}
    assert abs(len(mirrored) / len(KEYS) - 0.1) < 4 * sigma(0.1, len(KEYS))
    # Its own salt: mirrored requests are not all from one arm.
    challenger_share = sum(a.arm == "challenger" for a in mirrored) / len(mirrored)
    assert abs(challenger_share - 0.5) < 4 * sigma(0.5, len(mirrored))
    no_shadow = TrafficSettings(champion=1, challenger=2, challenger_weight=0.5, shadows=[3], shadow_fraction=0.0)
    assert all(not TrafficPolicy(no_shadow, salt="fraud").assign(k).shadows for k in KEYS[:2000])


def test_different_salts_split_differently():
    traffic = TrafficSettings(champion=1, challenger=2, challenger_weight=0.5)
    a = [TrafficPolicy(traffic, salt="fraud").assign(k).arm for k in KEYS]
    b = [TrafficPolicy(traffic, salt="churn").assign(k).arm for k in KEYS]
    agreement = sum(x == y for x, y in zip(a, b)) / len(KEYS)
    assert abs(agreement - 0.5) < 4 * sigma(0.5, len(KEYS))  # independent splits agree half the time


# ---------------------------------------------------------------------------- arm statistics


def test_arm_stats_match_numpy_and_round_trip():
    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 2.0, 500)
    latencies = rng.exponential(20.0, 2500)
    arm = ArmStats(version=7)
    for v in values:
        arm.record_outcome(float(v))
    for i, latency in enumerate(latencies):
        arm.record_request(float(latency), error=i % 10 == 0)
    assert arm.mean == pytest.approx(values.mean(), rel=1e-12)
    assert arm.variance == pytest.approx(values.var(ddof=1), rel=1e-9)
    assert arm.error_rate == pytest.approx(0.1)
    assert len(arm.latencies_ms) == LATENCY_WINDOW  # bounded: only the recent window
    assert arm.p99_latency_ms == pytest.approx(np.percentile(latencies[-LATENCY_WINDOW:], 99))
    restored = ArmStats.from_dict(json.loads(json.dumps(arm.to_dict())))
    assert restored == arm and restored.latencies_ms.maxlen == LATENCY_WINDOW
    empty = ArmStats(version=1)
    assert (empty.mean, empty.variance, empty.error_rate, empty.p99_latency_ms) == (0.0, 0.0, 0.0, None)


# ---------------------------------------------------------------------------- sequential test


def arm_with_outcomes(version: int, outcomes: np.ndarray) -> ArmStats:
    arm = ArmStats(version)
    for value in outcomes:
        arm.record_outcome(float(value))
    return arm


def first_crossings(
    champion_rate: float,
    challenger_rate: float,
    runs: int,
    samples_per_arm: int,
    settings: ExperimentSettings,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per simulated experiment, the first outcome pair at which the real mSPRT statistic
    (routing.mixture_statistic) says promote, and the first at which it says stop; inf if never.

    Outcomes arrive one per arm in turn and the test is checked after every pair from
    min_samples_per_arm on: cumulative sums over a (runs x samples) matrix, no Python loop per step.
    """
    rng = np.random.default_rng(seed)
    start = settings.min_samples_per_arm
    n = np.arange(start, samples_per_arm + 1, dtype=float)
    threshold = math.log(1 / settings.alpha)
    first_promote, first_stop = np.full(runs, np.inf), np.full(runs, np.inf)
    for lo in range(0, runs, 50):  # chunks keep memory to a few tens of MB
        rows = slice(lo, min(runs, lo + 50))
        shape = (rows.stop - rows.start, samples_per_arm)
        champion = np.cumsum(rng.random(shape) < champion_rate, axis=1, dtype=float)[:, start - 1 :]
        challenger = np.cumsum(rng.random(shape) < challenger_rate, axis=1, dtype=float)[:, start - 1 :]
        # 0/1 outcomes: the sum of squares is the sum.
        stat = mixture_statistic(n, champion, champion, n, challenger, challenger, settings.mixture_sd)
        significant = stat.log_lambda >= threshold
        for crossed, first in (
            (significant & (stat.effect > 0), first_promote),
            (significant & (stat.effect < 0), first_stop),
        ):
            hit = crossed.any(axis=1)
            first[rows] = np.where(hit, crossed.argmax(axis=1) + start, np.inf)
    return first_promote, first_stop


def test_null_false_promotion_rate_is_at_most_alpha_under_continuous_monitoring():
    settings = ExperimentSettings()
    promote, _ = first_crossings(BASE_RATE, BASE_RATE, SIMULATED_RUNS, NULL_SAMPLES_PER_ARM, settings, seed=1)
    false_promotions = np.isfinite(promote).mean()
    alpha = settings.alpha
    assert false_promotions <= alpha + 3 * sigma(alpha, SIMULATED_RUNS), false_promotions


def test_power_promotes_a_20_percent_lift():
    settings = ExperimentSettings()
    promote, stop = first_crossings(BASE_RATE, LIFTED_RATE, SIMULATED_RUNS, POWER_SAMPLES_PER_ARM, settings, seed=2)
    power = ((promote <= POWER_SAMPLES_PER_ARM) & (promote < stop)).mean()
    assert power >= 0.80, power


def test_scalar_test_uses_the_vectorised_formula_and_keeps_the_running_minimum():
    settings = ExperimentSettings(min_samples_per_arm=50)
    rng = np.random.default_rng(3)
    champion_outcomes = (rng.random(1500) < 0.3).astype(float)
    challenger_outcomes = (rng.random(1500) < 0.36).astype(float)
    n = np.arange(1, 1501, dtype=float)
    c, t = np.cumsum(champion_outcomes), np.cumsum(challenger_outcomes)
    stat = mixture_statistic(n, c, c, n, t, t, settings.mixture_sd)
    p_now = np.minimum(1.0, np.exp(-stat.log_lambda))
    test = SequentialTest(settings)
    champion, challenger = ArmStats(1), ArmStats(2)
    for i in range(1500):
        champion.record_outcome(champion_outcomes[i])
        challenger.record_outcome(challenger_outcomes[i])
        result = test.evaluate(champion, challenger)
        if i + 1 < settings.min_samples_per_arm:
            assert (result.p_value, result.decision) == (1.0, "continue")
    assert result.effect == pytest.approx(stat.effect[-1])
    assert result.ci_high - result.effect == pytest.approx(confidence_radius(stat.variance[-1], 0.02, 0.05))
    running_min = p_now[settings.min_samples_per_arm - 1 :].min()
    assert running_min < p_now[-1]  # this run's evidence dipped and came back: the minimum must be kept
    assert test.min_p_value == pytest.approx(running_min, rel=1e-9)
    assert result.p_value == test.min_p_value


def test_statistic_matches_the_published_formula():
    # Written out from the formula (Johari et al., normal approximation, plug-in variance), with
    # each arm's variance floored at the pooled variance of both arms plus pseudo-outcomes 0 and 1.
    rng = np.random.default_rng(5)
    champion_values, challenger_values = rng.normal(0.50, 0.3, 400), rng.normal(0.55, 0.3, 400)
    pooled = np.var(np.r_[champion_values, challenger_values, 0.0, 1.0], ddof=1)
    s2 = sum(max(np.var(v, ddof=1), pooled) / len(v) for v in (champion_values, challenger_values))
    tau2, alpha = 0.02**2, 0.05
    theta = challenger_values.mean() - champion_values.mean()
    lam = math.sqrt(s2 / (s2 + tau2)) * math.exp(tau2 * theta**2 / (2 * s2 * (s2 + tau2)))
    radius = math.sqrt(s2 * (s2 + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((s2 + tau2) / s2)))
    result = SequentialTest(ExperimentSettings(min_samples_per_arm=10)).evaluate(
        arm_with_outcomes(1, champion_values), arm_with_outcomes(2, challenger_values)
    )
    assert 0.05 < 1 / lam < 1  # some evidence, not yet significant: both terms of log Lambda matter here
    assert result.p_value == pytest.approx(1 / lam, rel=1e-9)
    assert (result.ci_low, result.ci_high) == pytest.approx((theta - radius, theta + radius), rel=1e-9)
    assert result.decision == "continue"


def test_confidence_sequence_excludes_zero_exactly_when_the_test_rejects():
    rng = np.random.default_rng(4)
    n = np.arange(200, 20_001, dtype=float)
    c = np.cumsum(rng.random(20_000) < 0.05)[199:].astype(float)
    t = np.cumsum(rng.random(20_000) < 0.062)[199:].astype(float)
    stat = mixture_statistic(n, c, c, n, t, t, 0.02)
    excludes_zero = np.abs(stat.effect) > confidence_radius(stat.variance, 0.02, 0.05)
    rejects = stat.log_lambda > math.log(1 / 0.05)
    assert excludes_zero.any() and not excludes_zero.all()
    np.testing.assert_array_equal(excludes_zero, rejects)


def test_no_decision_before_min_samples_and_no_infinite_evidence_from_constant_data():
    settings = ExperimentSettings(min_samples_per_arm=200)
    test = SequentialTest(settings)
    early = test.evaluate(arm_with_outcomes(1, np.zeros(150)), arm_with_outcomes(2, np.ones(150)))
    assert (early.decision, early.p_value) == ("continue", 1.0) and early.effect == 1.0
    assert test.evaluate(arm_with_outcomes(1, np.zeros(200)), arm_with_outcomes(2, np.ones(200))).decision == "promote"
    assert (
        SequentialTest(settings)
        .evaluate(arm_with_outcomes(1, np.ones(200)), arm_with_outcomes(2, np.zeros(200)))
        .decision
        == "stop"
    )
    # All-zero early data: zero effect, no evidence, and an interval that is not a point.
    all_zero = SequentialTest(settings).evaluate(
        arm_with_outcomes(1, np.zeros(300)), arm_with_outcomes(2, np.zeros(300))
    )
    assert (all_zero.effect, all_zero.p_value, all_zero.decision) == (0.0, 1.0, "continue")
    assert all_zero.ci_low < 0 < all_zero.ci_high and math.isfinite(all_zero.ci_high)
    # One arm constant, the other nearly so: finite, modest evidence, not a promotion.
    few = SequentialTest(settings).evaluate(
        arm_with_outcomes(1, np.zeros(200)), arm_with_outcomes(2, np.r_[np.ones(2), np.zeros(198)])
    )
    assert few.decision == "continue" and few.p_value > 0.05


# ---------------------------------------------------------------------------- experiment

T0 = 1_000_000.0


def new_experiment(**settings: object) -> Experiment:
    traffic = TrafficSettings(champion=1, challenger=2, challenger_weight=0.1, shadows=[3], shadow_fraction=0.05)
    return Experiment("fraud", traffic, ExperimentSettings(**settings), started_at=T0)


def feed(
    experiment: Experiment, rates: dict[int, float], pairs: int, seed: int = 0, now: float = T0, **request: object
) -> dict | None:
    """Interleave requests and 0/1 outcomes per version; evaluate after every pair, stop at the first action."""
    rng = np.random.default_rng(seed)
    latency_ms = request.get("latency_ms", {})
    errors = request.get("error_rate", {})
    for _ in range(pairs):
        for version, rate in rates.items():
            experiment.record_request(
                version, latency_ms.get(version, 10.0), bool(rng.random() < errors.get(version, 0.0))
            )
            experiment.record_outcome(version, float(rng.random() < rate))
        entry = experiment.evaluate(now)
        if entry is not None:
            return entry
    return None


def test_a_better_challenger_is_promoted_with_the_statistics_in_history():
    experiment = new_experiment()
    entry = feed(experiment, {1: 0.10, 2: 0.30}, pairs=2000)
    assert entry is not None and entry["action"] == "promote" and entry["who"] == "auto"
    assert experiment.status == "promoted" and experiment.previous_champion == 1
    assert (experiment.traffic.champion, experiment.traffic.challenger, experiment.traffic.challenger_weight) == (
        2,
        None,
        0,
    )
    assert experiment.traffic.shadows == [3] and experiment.versions == [1, 2, 3]  # old champion stays loaded
    assert experiment.history == [entry]
    assert entry["champion"]["version"] == 1 and entry["challenger"]["version"] == 2
    assert entry["champion"]["outcomes"] == entry["challenger"]["outcomes"] >= 200
    assert entry["challenger"]["mean"] > entry["champion"]["mean"]
    assert entry["effect"] > 0 and 0 < entry["interval"][0] < entry["effect"] < entry["interval"][1]
    assert entry["p_value"] <= 0.05
    assert experiment.evaluate(T0) is None  # nothing runs after a promotion


def test_rollback_restores_the_previous_champion():
    experiment = new_experiment()
    feed(experiment, {1: 0.10, 2: 0.30}, pairs=2000)
    entry = experiment.rollback(T0 + 60, "complaints from the fraud team", "ops")
    assert (entry["action"], entry["who"], entry["reason"]) == ("rollback", "ops", "complaints from the fraud team")
    t = experiment.traffic
    assert (t.champion, t.challenger, t.challenger_weight) == (1, 2, 0.0)
    assert experiment.status == "stopped" and experiment.previous_champion is None
    with pytest.raises(InvalidInput, match="nothing to roll back"):
        experiment.rollback(T0 + 61, "again", "ops")


def test_rollback_of_a_running_challenger_stops_it():
    experiment = new_experiment()
    experiment.rollback(T0, "bad canary", "ops")
    assert experiment.status == "stopped" and experiment.traffic.challenger_weight == 0
    assert experiment.traffic.champion == 1 and experiment.history[-1]["action"] == "rollback"


def test_a_worse_challenger_is_stopped():
    experiment = new_experiment()
    entry = feed(experiment, {1: 0.30, 2: 0.10}, pairs=2000)
    assert entry is not None and entry["action"] == "stop" and entry["effect"] < 0
    assert experiment.status == "stopped" and experiment.traffic.challenger_weight == 0
    assert experiment.traffic.champion == 1


def test_error_rate_guardrail_stops_the_challenger():
    failing = new_experiment(max_error_rate=0.05)
    entry = feed(failing, {1: 0.1, 2: 0.1}, pairs=1000, error_rate={2: 0.2})
    assert entry is not None and entry["action"] == "stop" and "error rate" in entry["reason"]
    assert failing.history[-1]["challenger"]["requests"] == 200  # it waits for min_samples_per_arm requests
    assert failing.status == "stopped" and failing.traffic.challenger_weight == 0
    healthy = new_experiment(max_error_rate=0.05)
    assert feed(healthy, {1: 0.1, 2: 0.1}, pairs=600, error_rate={2: 0.01}) is None
    assert healthy.status == "running"


def test_p99_guardrail_stops_a_slow_challenger():
    slow = new_experiment(max_p99_latency_ms=100.0)
    entry = feed(slow, {1: 0.1, 2: 0.1}, pairs=1000, latency_ms={2: 250.0})
    assert entry is not None and "p99" in entry["reason"] and slow.status == "stopped"
    fast = new_experiment(max_p99_latency_ms=100.0)
    assert feed(fast, {1: 0.1, 2: 0.1}, pairs=600, latency_ms={2: 50.0}) is None


def test_min_duration_delays_promotion_but_keeps_the_evidence():
    experiment = new_experiment(min_duration_s=3600.0)
    assert feed(experiment, {1: 0.10, 2: 0.30}, pairs=1000, now=T0 + 60) is None
    assert experiment.status == "running" and experiment.test.min_p_value <= 0.05
    entry = experiment.evaluate(T0 + 3600)
    assert entry is not None and entry["action"] == "promote" and experiment.traffic.champion == 2


def test_a_freeze_pauses_decisions_but_not_guardrails_and_keeps_the_evidence():
    experiment = new_experiment()
    entry = experiment.freeze(T0, "drift: amount, merchant_category")
    assert (entry["action"], entry["who"]) == ("freeze", "auto") and experiment.freeze(T0, "again") is None
    assert feed(experiment, {1: 0.10, 2: 0.30}, pairs=1000) is None
    assert experiment.status == "running" and experiment.test.min_p_value <= 0.05
    assert experiment.summary()["frozen"] == "drift: amount, merchant_category"
    restored = Experiment.from_dict(json.loads(json.dumps(experiment.to_dict())), experiment.settings)
    assert restored.frozen == experiment.frozen and restored.evaluate(T0) is None
    assert experiment.unfreeze(T0 + 1, "drift cleared")["action"] == "unfreeze"
    promoted = experiment.evaluate(T0 + 2)
    assert promoted is not None and promoted["action"] == "promote"
    failing = new_experiment()
    failing.freeze(T0, "drift")
    stop = feed(failing, {1: 0.1, 2: 0.1}, pairs=1000, error_rate={2: 0.2})
    assert stop is not None and "error rate" in stop["reason"]


def test_without_auto_promote_it_only_recommends_once():
    experiment = new_experiment(auto_promote=False)
    before = experiment.traffic
    entry = feed(experiment, {1: 0.10, 2: 0.30}, pairs=2000)
    assert entry is not None and (entry["action"], entry["recommendation"]) == ("recommend", "promote")
    assert experiment.status == "running" and experiment.traffic == before
    assert feed(experiment, {1: 0.10, 2: 0.30}, pairs=50, seed=1) is None  # the same advice is not repeated
    assert [h["action"] for h in experiment.history] == ["recommend"]
    experiment.promote(T0 + 10, "ops agrees", "ops")
    assert experiment.traffic.champion == 2 and experiment.history[-1]["who"] == "ops"


def test_round_trip_preserves_everything():
    experiment = new_experiment(auto_promote=False)
    feed(experiment, {1: 0.10, 2: 0.30}, pairs=400)
    experiment.record_request(3, 12.5, False)  # a shadow version has stats too
    state = json.loads(json.dumps(experiment.to_dict(), allow_nan=False))
    restored = Experiment.from_dict(state, experiment.settings)
    assert restored.to_dict() == experiment.to_dict()
    assert restored.summary() == experiment.summary()
    assert restored.test.min_p_value == experiment.test.min_p_value < 0.05
    assert restored.arms[2].latencies_ms == experiment.arms[2].latencies_ms
    assert restored.evaluate(T0) is None  # the recommendation it already made is remembered
    experiment.promote(T0, "ok", "ops")
    promoted = Experiment.from_dict(json.loads(json.dumps(experiment.to_dict())), experiment.settings)
    assert (promoted.status, promoted.previous_champion, promoted.traffic.champion) == ("promoted", 1, 2)
    promoted.rollback(T0 + 1, "undo", "ops")
    assert promoted.traffic.champion == 1


def test_summary_for_the_api():
    experiment = new_experiment()
    feed(experiment, {1: 0.1, 2: 0.1}, pairs=300, latency_ms={1: 5.0, 2: 7.0})
    summary = experiment.summary()
    assert summary["traffic"]["champion"] == {"version": 1, "weight": pytest.approx(0.9)}
    assert summary["traffic"]["challenger"] == {"version": 2, "weight": 0.1}
    assert summary["arms"]["challenger"]["requests"] == 300 and summary["arms"]["challenger"]["p99_latency_ms"] == 7.0
    assert summary["interval"][0] < summary["effect"] < summary["interval"][1]
    assert summary["decision"] == "continue" and summary["status"] == "running"
    json.dumps(summary, allow_nan=False)


def test_nothing_to_do_and_bad_feedback_raise_invalid_input():
    alone = Experiment("fraud", TrafficSettings(champion=1), ExperimentSettings(), started_at=T0)
    assert alone.status == "no_challenger" and alone.evaluate(T0) is None
    for action in (alone.promote, alone.rollback, alone.stop):
        with pytest.raises(InvalidInput, match="nothing to"):
            action(T0, "why", "ops")
    experiment = new_experiment(metric="accuracy")
    with pytest.raises(InvalidInput, match="no version 9"):
        experiment.record_outcome(9, 1.0)
    with pytest.raises(InvalidInput, match="finite"):
        experiment.record_outcome(1, float("nan"))
    with pytest.raises(InvalidInput, match="finite"):
        experiment.record_outcome(1, "1")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="accuracy"):
        experiment.record_outcome(1, 0.5)
    with pytest.raises(InvalidInput, match="who"):
        experiment.promote(T0, "why", "someone")  # type: ignore[arg-type]
    assert experiment.status == "running" and experiment.history == []
