"""The mixture sequential probability ratio test (mSPRT; Johari, Pekelis, Walsh, "Always valid
inference", 2017/2022): its p-value and confidence sequence stay valid however often they are
looked at, so the test may be checked after every outcome and stopped at once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from serve_app.config import ExperimentSettings
from serve_app.experiments.arms import ArmStats, Decision


class MixtureStatistic(NamedTuple):
    effect: Any
    """theta_hat = mean_challenger - mean_champion."""
    variance: Any
    """s2, the plug-in variance of theta_hat."""
    log_lambda: Any
    """log of the mixture likelihood ratio against theta = 0."""


def mixture_statistic(
    n_champion: Any,
    sum_champion: Any,
    sum_sq_champion: Any,
    n_challenger: Any,
    sum_challenger: Any,
    sum_sq_challenger: Any,
    mixture_sd: float,
) -> MixtureStatistic:
    """The mSPRT statistic from each arm's sufficient statistics (count, sum, sum of squares).

    Works on floats and on numpy arrays alike (elementwise), so the simulations in the tests
    check the very formula SequentialTest uses. Counts must be >= 1.

    Normal approximation with plug-in variance, mixing theta ~ N(0, tau^2):
        Lambda = sqrt(s2 / (s2 + tau2)) * exp(tau2 * theta^2 / (2 * s2 * (s2 + tau2))).
    """
    n_c = np.asarray(n_champion, dtype=float)
    n_t = np.asarray(n_challenger, dtype=float)
    mean_c, mean_t = sum_champion / n_c, sum_challenger / n_t
    var_c = np.maximum(0.0, (sum_sq_champion - sum_champion * mean_c) / np.maximum(n_c - 1, 1))
    var_t = np.maximum(0.0, (sum_sq_challenger - sum_challenger * mean_t) / np.maximum(n_t - 1, 1))
    # Floor each arm's variance at the pooled variance of both arms plus two pseudo-outcomes
    # 0 and 1 (the +1/+2 smoothing of a rate). Why: with rare events an arm that by chance saw
    # few successes has a tiny plug-in variance exactly when it looks worse, which inflates the
    # evidence; under H0 the pooled variance is the right one, and the pseudo-outcomes keep it
    # > 0 when all early outcomes are equal (no infinite evidence from all-zero data). The
    # pseudo-outcomes assume a rate-like scale, as mixture_sd's default does; their weight,
    # 2 / (n + 2), fades as outcomes arrive.
    n_pool = n_c + n_t + 2
    sum_pool = sum_champion + sum_challenger + 1.0
    sum_sq_pool = sum_sq_champion + sum_sq_challenger + 1.0
    var_floor = (sum_sq_pool - sum_pool * sum_pool / n_pool) / (n_pool - 1)
    s2 = np.maximum(var_c, var_floor) / n_c + np.maximum(var_t, var_floor) / n_t
    tau2 = mixture_sd * mixture_sd
    effect = mean_t - mean_c
    log_lambda = 0.5 * np.log(s2 / (s2 + tau2)) + tau2 * effect * effect / (2 * s2 * (s2 + tau2))
    return MixtureStatistic(effect, s2, log_lambda)


def confidence_radius(variance: Any, mixture_sd: float, alpha: float) -> Any:
    """Half-width of the (1 - alpha) confidence sequence: every theta0 the mSPRT for theta0 keeps."""
    tau2 = mixture_sd * mixture_sd
    return np.sqrt(
        variance * (variance + tau2) / tau2 * (2 * math.log(1 / alpha) + np.log((variance + tau2) / variance))
    )


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest test class, despite the name

    effect: float | None
    """mean_challenger - mean_champion; None until both arms have two outcomes."""
    ci_low: float | None
    ci_high: float | None
    p_value: float
    """Always-valid p-value: the running minimum over every evaluation so far."""
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SequentialTest:
    """Two-sample mSPRT on theta = mean_challenger - mean_champion, valid under continuous monitoring."""

    __test__ = False

    def __init__(self, settings: ExperimentSettings, min_p_value: float = 1.0):
        self.settings = settings
        # Running minimum of min(1, 1/Lambda): the always-valid p-value must never go back up.
        self.min_p_value = min_p_value

    def evaluate(self, champion: ArmStats, challenger: ArmStats, *, update: bool = True) -> TestResult:
        """The test on the current counts; update=False peeks without moving the running p-value."""
        s = self.settings
        if min(champion.outcomes, challenger.outcomes) < 2:
            return TestResult(None, None, None, self.min_p_value, "continue")
        stat = mixture_statistic(
            champion.outcomes,
            champion.outcome_sum,
            champion.outcome_sum_sq,
            challenger.outcomes,
            challenger.outcome_sum,
            challenger.outcome_sum_sq,
            s.mixture_sd,
        )
        effect = float(stat.effect)
        radius = float(confidence_radius(stat.variance, s.mixture_sd, s.alpha))
        p_value = self.min_p_value
        # No evidence counts before min_samples_per_arm: the normal approximation is poor there.
        if min(champion.outcomes, challenger.outcomes) >= s.min_samples_per_arm:
            p_value = min(p_value, math.exp(-float(stat.log_lambda)) if stat.log_lambda > 0 else 1.0)
            if update:
                self.min_p_value = p_value
        # Decide on the running minimum: a rejection stays a rejection (e.g. while min_duration_s
        # holds a promotion back), which is what makes acting on it later still valid.
        decision: Decision = "continue"
        if p_value <= s.alpha and effect != 0:
            decision = "promote" if effect > 0 else "stop"
        return TestResult(effect, effect - radius, effect + radius, p_value, decision)
