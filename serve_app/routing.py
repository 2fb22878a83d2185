"""Traffic policy (weighted sticky split, shadow sampling) and the champion/challenger experiment.

Plain Python and numpy: the policy runs on every request in every router replica, the experiment
is one model's state in the experiment store. Nothing here does I/O or imports Ray.

The experiment decides with a mixture sequential probability ratio test (mSPRT; Johari, Pekelis,
Walsh, "Always valid inference", 2017/2022): its p-value and confidence sequence stay valid however
often they are looked at, so the test may be checked after every outcome and stopped at once.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from serve_app.config import ExperimentSettings, TrafficSettings
from serve_app.errors import InvalidInput

Arm = Literal["champion", "challenger"]
Decision = Literal["continue", "promote", "stop"]
Status = Literal["running", "promoted", "stopped", "no_challenger"]
Who = Literal["auto", "ops"]

LATENCY_WINDOW = 2000
"""Recent latencies kept per arm for p99: bounded memory, and the guardrail sees today's behaviour."""


# --------------------------------------------------------------------------------------------
# Traffic split
# --------------------------------------------------------------------------------------------


def unit_interval(key: str, salt: str) -> float:
    """A stable hash of `key` under `salt`, uniform on [0, 1), equal on every process and machine.

    Python's hash() is randomised per process, so it would split one user differently per replica.
    """
    # Length-prefixing the salt keeps (salt, key) pairs from colliding ("ab"+"c" vs "a"+"bc");
    # surrogatepass: a JSON routing key may carry a lone surrogate, which must not become a 500.
    data = f"{len(salt)}:{salt}{key}".encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(data, digest_size=8).digest()
    # Top 53 bits: a double holds them exactly, so the result can never round up to 1.0.
    return (int.from_bytes(digest, "big") >> 11) * 2.0**-53


@dataclass(frozen=True)
class Assignment:
    arm: Arm
    version: int
    shadows: tuple[int, ...] = ()
    """Shadow versions this request is mirrored to; empty when it was not sampled."""


class TrafficPolicy:
    """Which version answers a routing key, and whether the request is mirrored to the shadows.

    Challenger iff unit_interval(key) < challenger_weight: raising the weight only moves champion
    keys to the challenger (monotone), and a key keeps its arm while the weight holds (sticky).
    """

    def __init__(self, traffic: TrafficSettings, salt: str):
        self.traffic = traffic
        self.salt = salt  # the model name, so two models split the same users independently
        self._shadow_salt = f"{salt}:shadow"  # independent of the arm split
        self._shadows = tuple(traffic.shadows)

    def assign(self, routing_key: str) -> Assignment:
        traffic = self.traffic
        if traffic.challenger is not None and unit_interval(routing_key, self.salt) < traffic.challenger_weight:
            arm: Arm = "challenger"
            version = traffic.challenger
        else:
            arm, version = "champion", traffic.champion
        mirrored = bool(self._shadows) and unit_interval(routing_key, self._shadow_salt) < traffic.shadow_fraction
        return Assignment(arm=arm, version=version, shadows=self._shadows if mirrored else ())


# --------------------------------------------------------------------------------------------
# Per-arm statistics
# --------------------------------------------------------------------------------------------


def _latency_window(values: Any = ()) -> deque[float]:
    return deque(values, maxlen=LATENCY_WINDOW)


@dataclass
class ArmStats:
    """Counts and outcome sums of one version; sums (not means) so that merging and the
    vectorised test use the same sufficient statistics."""

    version: int
    requests: int = 0
    errors: int = 0
    outcomes: int = 0
    outcome_sum: float = 0.0
    outcome_sum_sq: float = 0.0
    latencies_ms: deque[float] = field(default_factory=_latency_window)

    def record_request(self, latency_ms: float, error: bool) -> None:
        self.requests += 1
        self.errors += int(error)
        self.latencies_ms.append(float(latency_ms))  # failed requests count too: a timeout is slow

    def record_outcome(self, value: float) -> None:
        self.outcomes += 1
        self.outcome_sum += value
        self.outcome_sum_sq += value * value

    @property
    def mean(self) -> float:
        return self.outcome_sum / self.outcomes if self.outcomes else 0.0

    @property
    def variance(self) -> float:
        """Unbiased sample variance of the outcomes; 0 with fewer than two."""
        if self.outcomes < 2:
            return 0.0
        # Clipped: sum_sq - sum*mean may round below zero for constant outcomes.
        return max(0.0, (self.outcome_sum_sq - self.outcome_sum * self.mean) / (self.outcomes - 1))

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def p99_latency_ms(self) -> float | None:
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.fromiter(self.latencies_ms, dtype=float), 99))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "requests": self.requests, "errors": self.errors,
            "outcomes": self.outcomes, "outcome_sum": self.outcome_sum, "outcome_sum_sq": self.outcome_sum_sq,
            "latencies_ms": list(self.latencies_ms),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArmStats:
        return cls(
            version=int(d["version"]), requests=int(d["requests"]), errors=int(d["errors"]),
            outcomes=int(d["outcomes"]), outcome_sum=float(d["outcome_sum"]),
            outcome_sum_sq=float(d["outcome_sum_sq"]), latencies_ms=_latency_window(map(float, d["latencies_ms"])),
        )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version, "requests": self.requests, "errors": self.errors,
            "error_rate": self.error_rate, "outcomes": self.outcomes,
            "mean": self.mean if self.outcomes else None, "p99_latency_ms": self.p99_latency_ms,
        }  # fmt: skip


# --------------------------------------------------------------------------------------------
# Sequential test
# --------------------------------------------------------------------------------------------


class MixtureStatistic(NamedTuple):
    effect: Any
    """theta_hat = mean_challenger - mean_champion."""
    variance: Any
    """s2, the plug-in variance of theta_hat."""
    log_lambda: Any
    """log of the mixture likelihood ratio against theta = 0."""


def mixture_statistic(
    n_champion: Any, sum_champion: Any, sum_sq_champion: Any,
    n_challenger: Any, sum_challenger: Any, sum_sq_challenger: Any,
    mixture_sd: float,
) -> MixtureStatistic:  # fmt: skip
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
            champion.outcomes, champion.outcome_sum, champion.outcome_sum_sq,
            challenger.outcomes, challenger.outcome_sum, challenger.outcome_sum_sq,
            s.mixture_sd,
        )  # fmt: skip
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


# --------------------------------------------------------------------------------------------
# Experiment
# --------------------------------------------------------------------------------------------


class Experiment:
    """One model's champion/challenger experiment: traffic, per-version stats, decisions, history.

    Pure state: the caller persists to_dict() and pushes `traffic` to the routers when it changes.
    """

    def __init__(self, model: str, traffic: TrafficSettings, settings: ExperimentSettings, started_at: float):
        self.model = model
        self.traffic = traffic
        self.settings = settings
        self.started_at = started_at
        self.status: Status = "running" if traffic.challenger is not None else "no_challenger"
        self.previous_champion: int | None = None
        self.arms: dict[int, ArmStats] = {v: ArmStats(v) for v in traffic.versions}
        self.test = SequentialTest(settings)
        self.history: list[dict[str, Any]] = []
        self.last_recommendation: Decision | None = None
        self.frozen: str | None = None
        """Why automatic decisions are paused (drift on the inputs), or None."""

    # -- recording -------------------------------------------------------------------------

    @property
    def versions(self) -> list[int]:
        """Versions to keep loaded: the traffic's, plus the previous champion for a quick rollback."""
        extra = [self.previous_champion] if self.previous_champion is not None else []
        return sorted({*self.traffic.versions, *extra})

    def _arm(self, version: int) -> ArmStats:
        if version not in self.arms:
            if version not in self.traffic.versions:
                raise InvalidInput(f"model '{self.model}' has no version {version} in its experiment "
                                   f"(versions: {sorted({*self.arms, *self.traffic.versions})})")  # fmt: skip
            self.arms[version] = ArmStats(version)
        return self.arms[version]

    def record_request(self, version: int, latency_ms: float, error: bool) -> None:
        if not (math.isfinite(latency_ms) and latency_ms >= 0):
            raise InvalidInput(f"latency_ms must be a finite number >= 0, got {latency_ms!r}")
        self._arm(version).record_request(latency_ms, error)

    def record_outcome(self, version: int, value: float) -> None:
        """One feedback outcome: a reward, or 1.0 / 0.0 (correct / wrong) for the accuracy metric."""
        # numbers.Real: numpy scalars count; strings from a JSON body do not.
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise InvalidInput(f"feedback value must be a finite number, got {value!r}")
        if self.settings.metric == "accuracy" and value not in (0.0, 1.0):
            raise InvalidInput(f"feedback value for the accuracy metric must be 1.0 or 0.0, got {value!r}")
        self._arm(version).record_outcome(float(value))

    # -- deciding --------------------------------------------------------------------------

    def _production_arms(self) -> tuple[ArmStats, ArmStats] | None:
        if self.traffic.challenger is None:
            return None
        return self._arm(self.traffic.champion), self._arm(self.traffic.challenger)

    def result(self) -> TestResult | None:
        """The test as it stands, without moving the running p-value; None without a challenger."""
        arms = self._production_arms()
        return self.test.evaluate(*arms, update=False) if arms else None

    def _guardrail_breach(self, challenger: ArmStats) -> str | None:
        s = self.settings
        # Both guardrails wait for min_samples_per_arm requests: one cold or failed first call
        # must not end an experiment, and p99 of a handful of latencies is just their maximum.
        if challenger.requests < s.min_samples_per_arm:
            return None
        if challenger.error_rate > s.max_error_rate:
            return (f"guardrail: challenger error rate {challenger.error_rate:.4f} > max_error_rate "
                    f"{s.max_error_rate} over {challenger.requests} requests")  # fmt: skip
        p99 = challenger.p99_latency_ms
        if s.max_p99_latency_ms is not None and p99 is not None and p99 > s.max_p99_latency_ms:
            return f"guardrail: challenger p99 latency {p99:.1f} ms > max_p99_latency_ms {s.max_p99_latency_ms}"
        return None

    def evaluate(self, now: float) -> dict[str, Any] | None:
        """Check guardrails and the test; act (or recommend). Returns the new history entry, or None."""
        arms = self._production_arms()
        if self.status != "running" or arms is None:
            return None
        champion, challenger = arms
        # Guardrails always act, even without auto_promote: they protect clients, not a metric.
        breach = self._guardrail_breach(challenger)
        if breach is not None:
            return self.stop(now, breach, "auto")
        result = self.test.evaluate(champion, challenger)
        decision = result.decision
        if decision == "promote" and now - self.started_at < self.settings.min_duration_s:
            decision = "continue"  # the running p-value keeps the evidence until the time has passed
        if self.frozen is not None:
            decision = "continue"  # on drifting inputs the comparison is not trustworthy; evidence waits
        if decision == "continue":
            return None
        reason = (
            f"sequential test: effect {result.effect:+.4g}, {1 - self.settings.alpha:.0%} interval "
            f"[{result.ci_low:.4g}, {result.ci_high:.4g}], p = {result.p_value:.3g} <= alpha {self.settings.alpha}"
        )
        if self.settings.auto_promote:
            return self.promote(now, reason, "auto") if decision == "promote" else self.stop(now, reason, "auto")
        if decision == self.last_recommendation:
            return None
        self.last_recommendation = decision
        return self._record(now, "recommend", reason, "auto", result, recommendation=decision)

    # -- acting ----------------------------------------------------------------------------

    def _record(
        self, now: float, action: str, reason: str, who: str, result: TestResult | None = None, **extra: Any
    ) -> dict[str, Any]:
        if who not in ("auto", "ops"):
            raise InvalidInput(f"who must be 'auto' or 'ops', got {who!r}")
        result = result if result is not None else self.result()
        entry = {
            "time": now, "action": action, "reason": reason, "who": who, **extra,
            "champion": self._arm(self.traffic.champion).summary(),
            "challenger": self._arm(self.traffic.challenger).summary() if self.traffic.challenger is not None else None,
            "effect": result.effect if result else None,
            "interval": [result.ci_low, result.ci_high] if result and result.effect is not None else None,
            "p_value": result.p_value if result else None,
        }  # fmt: skip
        self.history.append(entry)
        return entry

    def promote(self, now: float, reason: str, who: Who) -> dict[str, Any]:
        """The challenger becomes the champion; the old champion is remembered for rollback."""
        if self.traffic.challenger is None:
            raise InvalidInput(f"model '{self.model}': nothing to promote, there is no challenger "
                               f"(status '{self.status}')")  # fmt: skip
        entry = self._record(now, "promote", reason, who)  # the statistics as they were at the decision
        self.previous_champion = self.traffic.champion
        self.traffic = self.traffic.model_copy(
            update={"champion": self.traffic.challenger, "challenger": None, "challenger_weight": 0.0}
        )
        self.status = "promoted"
        return entry

    def stop(self, now: float, reason: str, who: Who) -> dict[str, Any]:
        """End a running experiment: the challenger gets no more traffic (it stays in `traffic` at weight 0)."""
        if self.status != "running" or self.traffic.challenger is None:
            raise InvalidInput(f"model '{self.model}': nothing to stop, the experiment is '{self.status}'")
        entry = self._record(now, "stop", reason, who)
        self._set_challenger_weight_zero()
        self.status = "stopped"
        return entry

    def rollback(self, now: float, reason: str, who: Who) -> dict[str, Any]:
        """Undo a promotion (the promoted version drops to weight 0), or stop a running challenger."""
        if self.status == "promoted" and self.previous_champion is not None:
            entry = self._record(now, "rollback", reason, who)
            self.traffic = self.traffic.model_copy(
                update={
                    "champion": self.previous_champion,
                    "challenger": self.traffic.champion,
                    "challenger_weight": 0.0,
                }
            )
            self.previous_champion = None
            self.status = "stopped"
            return entry
        if self.status == "running" and self.traffic.challenger is not None:
            entry = self._record(now, "rollback", reason, who)
            self._set_challenger_weight_zero()
            self.status = "stopped"
            return entry
        raise InvalidInput(f"model '{self.model}': nothing to roll back, the experiment is '{self.status}' "
                           "(only a promotion or a running challenger can be rolled back)")  # fmt: skip

    def freeze(self, now: float, reason: str) -> dict[str, Any] | None:
        """Pause automatic decisions (guardrails still act); None if already paused."""
        if self.frozen is not None:
            return None
        self.frozen = reason
        return self._record(now, "freeze", reason, "auto")

    def unfreeze(self, now: float, reason: str) -> dict[str, Any] | None:
        if self.frozen is None:
            return None
        self.frozen = None
        return self._record(now, "unfreeze", reason, "auto")

    def _set_challenger_weight_zero(self) -> None:
        self.traffic = self.traffic.model_copy(update={"challenger_weight": 0.0})

    # -- reporting and persistence ---------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """What the API shows: traffic, per-arm stats, the test as it stands, and the history."""
        t = self.traffic
        result = self.result()
        challenger_traffic = None if t.challenger is None else {"version": t.challenger, "weight": t.challenger_weight}
        return {
            "model": self.model,
            "status": self.status,
            "frozen": self.frozen,
            "metric": self.settings.metric,
            "traffic": {
                "champion": {"version": t.champion, "weight": 1.0 - t.challenger_weight},
                "challenger": challenger_traffic,
                "shadows": list(t.shadows),
                "shadow_fraction": t.shadow_fraction,
            },
            "previous_champion": self.previous_champion,
            "arms": {
                "champion": self._arm(t.champion).summary(),
                "challenger": self._arm(t.challenger).summary() if t.challenger is not None else None,
            },
            "effect": result.effect if result else None,
            "interval": [result.ci_low, result.ci_high] if result and result.effect is not None else None,
            "p_value": result.p_value if result else None,
            "decision": result.decision if result else None,
            "history": [dict(entry) for entry in self.history],
        }  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state (settings excluded: they come from the config at load)."""
        return {
            "model": self.model,
            "traffic": self.traffic.model_dump(mode="json"),
            "started_at": self.started_at,
            "status": self.status,
            "previous_champion": self.previous_champion,
            "arms": [arm.to_dict() for _, arm in sorted(self.arms.items())],
            "min_p_value": self.test.min_p_value,
            "last_recommendation": self.last_recommendation,
            "frozen": self.frozen,
            "history": [dict(entry) for entry in self.history],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], settings: ExperimentSettings) -> Experiment:
        experiment = cls(d["model"], TrafficSettings.model_validate(d["traffic"]), settings, float(d["started_at"]))
        if d["status"] not in ("running", "promoted", "stopped", "no_challenger"):
            raise InvalidInput(f"experiment state of '{d['model']}': unknown status {d['status']!r}")
        experiment.status = d["status"]
        experiment.previous_champion = d["previous_champion"]
        experiment.arms = {arm.version: arm for arm in map(ArmStats.from_dict, d["arms"])}
        experiment.test.min_p_value = float(d["min_p_value"])
        experiment.last_recommendation = d["last_recommendation"]
        experiment.frozen = d.get("frozen")
        experiment.history = [dict(entry) for entry in d["history"]]
        return experiment
