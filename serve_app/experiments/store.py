"""The one place where experiment statistics and decisions live (behind a single-replica deployment).

Router replicas send batches of request events and forward feedback; the store joins feedback
to requests by id, runs the sequential test, applies its decisions, and persists each model's
experiment under the storage URI so that a restart keeps champion, weights, counts and history.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import secrets
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from serve_app.config import DEFAULT_DECISION_THRESHOLD, ExperimentSettings, TrafficSettings
from serve_app.errors import InvalidInput, ModelNotFound
from serve_app.experiments.experiment import Experiment
from serve_app.messages import RequestEvent, Routing
from serve_app.predlog import EXPERIMENT_HISTORY, FEEDBACK, ParquetLog, read_table, utc_now
from serve_app.protocol.messages import MAX_ID_CHARS
from serve_app.scores import positive
from serve_app.storage import read_json, write_json

SAVE_INTERVAL_S = 1.0
logger = logging.getLogger("serve_app.experiments")


def _state_path(model: str) -> str:
    return f"experiments/{model}.json"


class ExperimentStore:
    def __init__(
        self,
        storage_uri: str,
        settings: dict[str, ExperimentSettings],
        clock: Callable[[], float] = time.time,
        max_tracked_requests: int = 200_000,
        decision_thresholds: dict[str, float] | None = None,
    ):
        """decision_thresholds: each model's ModelConfig.decision_threshold, for label feedback."""
        self.storage_uri = storage_uri
        self.settings = settings
        self.decision_thresholds = decision_thresholds or {}
        self.clock = clock
        self.max_tracked_requests = max_tracked_requests
        self.experiments: dict[str, Experiment] = {}
        self.configured: dict[str, dict] = {}
        self.requests: OrderedDict[str, tuple[str, int, float | None]] = OrderedDict()
        # Feedback may overtake its request's event (routers ship events once a second): it waits here.
        self.waiting_feedback: OrderedDict[str, tuple[str, Any, Any]] = OrderedDict()
        self.unmatched_feedback: Counter = Counter()
        # A fresh writer id per start: files of an earlier run are never overwritten.
        self.feedback_log = ParquetLog(storage_uri, f"experiments-{uuid.uuid4().hex[:12]}")
        self.bad_events = 0
        self._saved_at: dict[str, float] = {}
        self.history_log: dict[str, list[dict]] = {}
        """Per model, every history entry of every experiment, oldest first (the experiment_history table)."""
        self._history_logged: dict[str, int] = {}
        self.salts: dict[str, str] = {}
        """Per model, its experiment's secret salt of the routing key's hash (persisted, never shown)."""
        self._unsaved: set[str] = set()

    # -- configuration -----------------------------------------------------------------

    def configure(self, model: str, traffic: TrafficSettings) -> None:
        """Apply ops' configured traffic, unless it is what was configured before a restart."""
        if model not in self.settings:
            raise InvalidInput(f"model '{model}' has no experiment settings")
        wanted = traffic.model_dump()
        if model not in self.experiments:  # first call since start: what was persisted comes back first
            logged = read_table(self.storage_uri, EXPERIMENT_HISTORY, model).to_pylist()
            self.history_log[model] = [_history_row(row) for row in sorted(logged, key=lambda r: r["time"])]
            state = read_json(self.storage_uri, _state_path(model))
            if state is not None:
                self.experiments[model] = Experiment.from_dict(state["experiment"], self.settings[model])
                self.configured[model] = state["configured"]
                self.salts[model] = state.get("salt") or secrets.token_hex(16)
                self._history_logged[model] = len(self.experiments[model].history)
        if self.configured.get(model) == wanted:
            return
        current = self.experiments.get(model)
        same_pair = current is not None and (current.traffic.champion, current.traffic.challenger) == (
            traffic.champion,
            traffic.challenger,
        )
        if same_pair and current.status == "running":
            current.traffic = traffic  # new weights or shadows: the statistics go on
        else:
            self.experiments[model] = Experiment(model, traffic, self.settings[model], started_at=self.clock())
            self.salts[model] = secrets.token_hex(16)  # a new experiment splits users anew
            self._history_logged[model] = 0
            self._log_history(model, {"time": self.clock(), "action": "start", "who": "config", "traffic": wanted})
        self.configured[model] = wanted
        self.save(model)

    def traffic(self) -> dict[str, Routing]:
        """What every router should route by now (it changes on promotion and rollback)."""
        return {model: Routing(e.traffic.model_dump(), self.salts[model]) for model, e in self.experiments.items()}

    # -- events and feedback -------------------------------------------------------------

    def record(self, events: list[RequestEvent]) -> list[dict]:
        """Request events from the routers; returns the decisions they triggered."""
        touched = set()
        for event in events:
            experiment = self.experiments.get(event.model)
            if experiment is None:
                continue
            try:
                experiment.record_request(event.version, event.latency_ms, event.error)
            except InvalidInput:  # e.g. an event of a version the experiment moved away from
                self.bad_events += 1
                continue
            self._remember(event.request_id, event.model, event.version, event.score)
            waiting = self.waiting_feedback.pop(event.request_id, None)
            if waiting is not None and waiting[0] == event.model:
                self._apply_outcome(event.model, event.version, event.score, *waiting[1:])
            touched.add(event.model)
        decisions = self._evaluate(touched)
        for model in touched:
            self.save(model, throttle=True)
        return decisions

    def _remember(self, request_id: str, model: str, version: int, score: float | None) -> None:
        self.requests[request_id] = (model, version, score)
        if len(self.requests) > self.max_tracked_requests:
            self.requests.popitem(last=False)

    def feedback(self, model: str, request_id: Any, reward: Any = None, label: Any = None) -> dict:
        """Record an outcome. An id the store does not know yet is logged, counted, and kept
        waiting: if its request's event arrives later, the outcome still counts."""
        if model not in self.experiments:
            raise ModelNotFound(f"model '{model}' has no experiment to take feedback")
        if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_CHARS:
            raise InvalidInput(f"'id' must be the request id: a non-empty string of at most {MAX_ID_CHARS} characters")
        if (reward is None) == (label is None):
            raise InvalidInput("give exactly one of 'reward' (a number) or 'label'")
        if reward is not None and (isinstance(reward, bool) or not isinstance(reward, (int, float))):
            raise InvalidInput(f"'reward' must be a number, got {reward!r}")
        if reward is not None and not math.isfinite(reward):
            raise InvalidInput("'reward' must be finite")
        if label is not None and not isinstance(label, (bool, int, str)):
            raise InvalidInput("'label' must be a boolean, an integer or a string")
        if label is not None and len(str(label)) > MAX_ID_CHARS:
            raise InvalidInput(f"'label' must be at most {MAX_ID_CHARS} characters")
        entry = self.requests.get(request_id)
        known = entry is not None and entry[0] == model
        self.feedback_log.record(
            FEEDBACK,
            {
                "request_id": request_id,
                "time": utc_now(),
                "model": model,
                "reward": None if reward is None else float(reward),
                "label": None if label is None else str(label),
                "known": known,
            },
        )
        if not known:
            self.waiting_feedback[request_id] = (model, reward, label)
            if len(self.waiting_feedback) > self.max_tracked_requests:
                evicted_model = self.waiting_feedback.popitem(last=False)[1][0]
                self.unmatched_feedback[evicted_model] += 1
            return {"id": request_id, "known": False}
        _, version, score = self.requests.pop(request_id)  # one outcome per request: a repeat waits unmatched
        self._apply_outcome(model, version, score, reward, label)
        decisions = self._evaluate({model})
        self.save(model, throttle=not decisions)
        return {"id": request_id, "known": True, "version": str(version)}

    def _apply_outcome(self, model: str, version: int, score: float | None, reward: Any, label: Any) -> None:
        outcome = self._outcome(model, reward, label, score)
        if outcome is not None:
            self.experiments[model].record_outcome(version, outcome)

    def _outcome(self, model: str, reward: Any, label: Any, score: float | None) -> float | None:
        """The metric's value for one request: the reward, or 1/0 for a correct/incorrect prediction."""
        if self.settings[model].metric == "reward":
            return None if reward is None else float(reward)
        if label is None or score is None:
            return None
        labelled_positive = label in (True, 1, "1", "true", "True")
        threshold = self.decision_thresholds.get(model, DEFAULT_DECISION_THRESHOLD)
        return 1.0 if positive(score, threshold) == labelled_positive else 0.0

    def _evaluate(self, models: set[str]) -> list[dict]:
        decisions = []
        for model in models:
            decision = self.experiments[model].evaluate(self.clock())
            if decision is not None:
                decisions.append(decision)
                self.save(model)
        return decisions

    # -- ops -------------------------------------------------------------------------------

    def _experiment(self, model: str) -> Experiment:
        experiment = self.experiments.get(model)
        if experiment is None:
            raise ModelNotFound(f"model '{model}' has no experiment")
        return experiment

    def summary(self, model: str) -> dict:
        """The experiment as it stands; `history_log`: every entry of every experiment of the model."""
        summary = self._experiment(model).summary()
        summary["history_log"] = [dict(entry) for entry in self.history_log.get(model, [])]
        waiting = sum(1 for entry in self.waiting_feedback.values() if entry[0] == model)
        summary["unknown_feedback"] = waiting + self.unmatched_feedback[model]
        return summary

    def promote(self, model: str, reason: str, who: str) -> dict:
        entry = self._experiment(model).promote(self.clock(), reason, who)
        self.save(model)
        return entry

    def rollback(self, model: str, reason: str, who: str) -> dict:
        entry = self._experiment(model).rollback(self.clock(), reason, who)
        self.save(model)
        return entry

    def freeze(self, model: str, frozen: bool, reason: str) -> dict | None:
        """Pause (or resume) automatic decisions, e.g. while the model's inputs drift."""
        experiment = self._experiment(model)
        now = self.clock()
        entry = experiment.freeze(now, reason) if frozen else experiment.unfreeze(now, reason)
        if entry is not None:
            self.save(model)
        return entry

    def save(self, model: str, throttle: bool = False) -> None:
        """Persist a model's experiment; throttled saves wait for flush() at most SAVE_INTERVAL_S.
        New history entries go to the append-only table at once (written with the next flush)."""
        history = self.experiments[model].history
        for entry in history[self._history_logged.get(model, 0) :]:
            self._log_history(model, entry)
        self._history_logged[model] = len(history)
        now = self.clock()
        if throttle and now - self._saved_at.get(model, 0.0) < SAVE_INTERVAL_S:
            self._unsaved.add(model)
            return
        document = {
            "configured": self.configured[model],
            "experiment": self.experiments[model].to_dict(),
            "salt": self.salts[model],
        }
        try:
            write_json(self.storage_uri, _state_path(model), document)
        except Exception as error:  # storage trouble must not fail a request: the next flush retries
            logger.warning("saving the experiment of %s failed, will retry: %s", model, error)
            self._unsaved.add(model)
            return
        self._saved_at[model] = now
        self._unsaved.discard(model)

    def flush(self) -> None:
        """Write what throttling held back, and the feedback log: called periodically and at shutdown."""
        for model in list(self._unsaved):
            self.save(model)
        self.feedback_log.flush()

    def _log_history(self, model: str, entry: dict) -> None:
        experiment = self.experiments[model]
        row = {
            "time": datetime.datetime.fromtimestamp(entry["time"], datetime.timezone.utc),
            "model": model,
            "experiment_started_at": experiment.started_at,
            "action": entry["action"],
            "who": entry.get("who"),
            "reason": entry.get("reason"),
            "entry": json.dumps(entry, default=str),
        }
        self.feedback_log.record(EXPERIMENT_HISTORY, row)
        self.history_log.setdefault(model, []).append(_history_row(row))


def _history_row(row: dict) -> dict:
    """A history table row as the API shows it: the entry, with its experiment and time."""
    return {**json.loads(row["entry"]), "experiment_started_at": row["experiment_started_at"]}
