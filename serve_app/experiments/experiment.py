"""One model's champion/challenger experiment: traffic, per-version stats, decisions, history.
Plain state: the experiment store persists it and pushes its traffic to the routers."""

from __future__ import annotations

import math
import numbers
from typing import Any

from serve_app.config import ExperimentSettings, TrafficSettings
from serve_app.errors import InvalidInput
from serve_app.experiments.arms import ArmStats, Decision, Status, Who
from serve_app.experiments.sequential import SequentialTest, TestResult


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
                raise InvalidInput(
                    f"model '{self.model}' has no version {version} in its experiment "
                    f"(versions: {sorted({*self.arms, *self.traffic.versions})})"
                )
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
            return (
                f"guardrail: challenger error rate {challenger.error_rate:.4f} > max_error_rate "
                f"{s.max_error_rate} over {challenger.requests} requests"
            )
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
            "time": now,
            "action": action,
            "reason": reason,
            "who": who,
            **extra,
            "champion": self._arm(self.traffic.champion).summary(),
            "challenger": self._arm(self.traffic.challenger).summary() if self.traffic.challenger is not None else None,
            "effect": result.effect if result else None,
            "interval": [result.ci_low, result.ci_high] if result and result.effect is not None else None,
            "p_value": result.p_value if result else None,
        }
        self.history.append(entry)
        return entry

    def promote(self, now: float, reason: str, who: Who) -> dict[str, Any]:
        """The challenger becomes the champion; the old champion is remembered for rollback."""
        if self.traffic.challenger is None:
            raise InvalidInput(
                f"model '{self.model}': nothing to promote, there is no challenger (status '{self.status}')"
            )
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
        raise InvalidInput(
            f"model '{self.model}': nothing to roll back, the experiment is '{self.status}' "
            "(only a promotion or a running challenger can be rolled back)"
        )

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
        }

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
