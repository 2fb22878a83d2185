"""The experiment store without Ray: events and feedback in, decisions and persisted state out."""

from __future__ import annotations

import json

import pytest

from serve_app.config import ExperimentSettings, TrafficSettings
from serve_app.errors import InvalidInput, ModelNotFound
from serve_app.experiments.store import ExperimentStore
from serve_app.messages import RequestEvent
from serve_app.predlog import FEEDBACK, read_table

TRAFFIC = TrafficSettings(champion=1, challenger=2, challenger_weight=0.5)


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _store(tmp_path, clock=None, **settings) -> ExperimentStore:
    store = ExperimentStore(
        str(tmp_path), {"fraud": ExperimentSettings(min_samples_per_arm=50, **settings)}, clock=clock or Clock()
    )
    store.configure("fraud", TRAFFIC)
    return store


def _traffic_of(store: ExperimentStore) -> tuple[int, int | None]:
    traffic = store.traffic()["fraud"].traffic
    return traffic["champion"], traffic["challenger"]


def _play(store: ExperimentStore, rounds: int, champion_rate: float, challenger_rate: float, prefix: str = "r"):
    """Requests answered by each arm, then their rewards, deterministic (every k-th is a success)."""
    for i in range(rounds):
        events = [
            RequestEvent(model="fraud", request_id=f"{prefix}{i}-{v}", version=v, latency_ms=2.0, error=False)
            for v in (1, 2)
        ]
        store.record(events)
        for version, rate in ((1, champion_rate), (2, challenger_rate)):
            reward = 1.0 if (i * rate) % 1 + rate >= 1 else 0.0
            store.feedback("fraud", f"{prefix}{i}-{version}", reward=reward)
            if store.experiments["fraud"].status != "running":
                return


def test_a_clearly_better_challenger_is_promoted_and_the_state_survives_a_restart(tmp_path):
    store = _store(tmp_path)
    _play(store, 2_000, champion_rate=0.2, challenger_rate=0.6)
    assert _traffic_of(store) == (2, None)
    summary = store.summary("fraud")
    assert summary["status"] == "promoted" and summary["history"][-1]["action"] == "promote"
    store.flush()
    restarted = ExperimentStore(str(tmp_path), {"fraud": ExperimentSettings(min_samples_per_arm=50)})
    restarted.configure("fraud", TRAFFIC)  # the same configured traffic: the persisted state wins
    assert _traffic_of(restarted) == (2, None)
    assert restarted.summary("fraud")["history"] == summary["history"]


def test_a_changed_configuration_starts_a_new_experiment(tmp_path):
    store = _store(tmp_path)
    _play(store, 2_000, 0.2, 0.6)
    store.configure("fraud", TrafficSettings(champion=2, challenger=1, challenger_weight=0.1))
    assert _traffic_of(store) == (2, 1) and store.summary("fraud")["status"] == "running"


def test_the_history_of_every_experiment_is_kept_when_a_new_one_starts(tmp_path, reliability):
    row = reliability("Faults", "a new experiment replacing a promoted one, then a restart (unit)")
    clock = Clock()
    store = _store(tmp_path, clock=clock)
    _play(store, 2_000, 0.2, 0.6)  # promoted
    clock.now += 3_600
    store.configure("fraud", TrafficSettings(champion=2, challenger=1, challenger_weight=0.1))  # a new experiment
    store.rollback("fraud", "ops changed their mind", "ops")
    summary = store.summary("fraud")
    assert [entry["action"] for entry in summary["history"]] == ["rollback"]  # this experiment's
    logged = summary["history_log"]
    assert [entry["action"] for entry in logged] == ["start", "promote", "start", "rollback"]
    assert [entry["experiment_started_at"] for entry in logged] == [1_000.0, 1_000.0, 4_600.0, 4_600.0]
    assert logged[1]["who"] == "auto" and logged[1]["challenger"]["version"] == 2  # the evidence, as decided
    store.flush()
    restarted = ExperimentStore(str(tmp_path), {"fraud": ExperimentSettings(min_samples_per_arm=50)})
    restarted.configure("fraud", TrafficSettings(champion=2, challenger=1, challenger_weight=0.1))
    assert restarted.summary("fraud")["history_log"] == logged  # append-only, across restarts
    row.measured["history kept"] = ", ".join(entry["action"] for entry in logged)


def test_new_weights_keep_the_statistics(tmp_path):
    store = _store(tmp_path)
    _play(store, 20, 0.5, 0.5)
    before = store.summary("fraud")["arms"]["challenger"]["requests"]
    store.configure("fraud", TRAFFIC.model_copy(update={"challenger_weight": 0.2}))
    assert store.traffic()["fraud"].traffic["challenger_weight"] == 0.2
    assert store.summary("fraud")["arms"]["challenger"]["requests"] == before > 0


def test_counts_are_persisted_within_a_second_without_a_decision(tmp_path):
    clock = Clock()
    store = _store(tmp_path, clock)
    _play(store, 10, 0.5, 0.5)
    clock.now += 5
    store.flush()
    restarted = ExperimentStore(str(tmp_path), {"fraud": ExperimentSettings(min_samples_per_arm=50)})
    restarted.configure("fraud", TRAFFIC)
    assert restarted.summary("fraud")["arms"]["champion"]["requests"] == 10


def test_feedback_that_overtakes_its_request_still_counts(tmp_path):
    store = _store(tmp_path)
    assert store.feedback("fraud", "early", reward=1.0)["known"] is False
    store.record([RequestEvent(model="fraud", request_id="early", version=2, latency_ms=1.0, error=False)])
    arm = store.summary("fraud")["arms"]["challenger"]
    assert (arm["outcomes"], arm["mean"]) == (1, 1.0) and store.summary("fraud")["unknown_feedback"] == 0


def test_unknown_ids_are_kept_and_reported(tmp_path):
    store = _store(tmp_path)
    assert store.feedback("fraud", "never-seen", reward=1.0) == {"id": "never-seen", "known": False}
    assert store.summary("fraud")["unknown_feedback"] == 1
    store.flush()
    rows = read_table(str(tmp_path), FEEDBACK, "fraud").to_pylist()
    assert [(r["request_id"], r["known"], r["reward"]) for r in rows] == [("never-seen", False, 1.0)]


@pytest.mark.parametrize(
    ("request_id", "reward", "label", "message"),
    [
        ("", 1.0, None, "'id'"),
        (42, 1.0, None, "'id'"),
        ("x" * 300, 1.0, None, "'id'"),
        ("r1", "lots", None, "'reward' must be a number"),
        ("r1", True, None, "'reward' must be a number"),
        ("r1", float("nan"), None, "finite"),
        ("r1", None, None, "exactly one"),
        ("r1", 1.0, 1, "exactly one"),
        ("r1", None, [1], "'label'"),
        ("r1", None, "y" * 257, "'label' must be at most 256 characters"),
    ],
)
def test_malformed_feedback_is_refused(tmp_path, request_id, reward, label, message):
    with pytest.raises(InvalidInput, match=message):
        _store(tmp_path).feedback("fraud", request_id, reward, label)


def test_feedback_for_a_model_without_experiment_is_not_found(tmp_path):
    with pytest.raises(ModelNotFound):
        _store(tmp_path).feedback("dense", "r1", reward=1.0)


def test_accuracy_from_labels(tmp_path):
    store = _store(tmp_path, metric="accuracy")
    store.record([RequestEvent(model="fraud", request_id="a", version=2, latency_ms=1.0, error=False, score=0.9)])
    store.record([RequestEvent(model="fraud", request_id="b", version=2, latency_ms=1.0, error=False, score=0.9)])
    store.feedback("fraud", "a", label=True)  # predicted fraud, was fraud: correct
    store.feedback("fraud", "b", label="false")  # predicted fraud, was not: wrong
    arm = store.summary("fraud")["arms"]["challenger"]
    assert (arm["outcomes"], arm["mean"]) == (2, 0.5)


def test_ops_promote_and_rollback(tmp_path):
    store = _store(tmp_path)
    entry = store.promote("fraud", "looks good", "ops")
    assert entry["who"] == "ops" and _traffic_of(store) == (2, None)
    store.rollback("fraud", "bad numbers", "ops")
    assert _traffic_of(store)[0] == 1
    with pytest.raises(ModelNotFound):
        store.promote("nope", "x", "ops")


def test_a_bad_event_is_skipped_and_counted_not_the_batch(tmp_path):
    store = _store(tmp_path)
    events = [
        RequestEvent(model="fraud", request_id="a", version=1, latency_ms=1.0, error=False),
        RequestEvent(model="fraud", request_id="b", version=7, latency_ms=1.0, error=False),  # not in the experiment
        RequestEvent(model="fraud", request_id="c", version=2, latency_ms=1.0, error=False),
    ]
    store.record(events)
    arms = store.summary("fraud")["arms"]
    assert (arms["champion"]["requests"], arms["challenger"]["requests"], store.bad_events) == (1, 1, 1)


def test_feedback_counts_once_per_request(tmp_path):
    store = _store(tmp_path)
    store.record([RequestEvent(model="fraud", request_id="a", version=2, latency_ms=1.0, error=False)])
    assert store.feedback("fraud", "a", reward=1.0)["known"] is True
    assert store.feedback("fraud", "a", reward=1.0)["known"] is False  # a retry does not count twice
    assert store.summary("fraud")["arms"]["challenger"]["outcomes"] == 1


def test_a_restart_with_new_weights_keeps_the_statistics(tmp_path):
    store = _store(tmp_path)
    _play(store, 20, 0.5, 0.5)
    store.flush()
    restarted = ExperimentStore(str(tmp_path), {"fraud": ExperimentSettings(min_samples_per_arm=50)})
    restarted.configure("fraud", TRAFFIC.model_copy(update={"challenger_weight": 0.1}))
    assert restarted.traffic()["fraud"].traffic["challenger_weight"] == 0.1
    assert restarted.summary("fraud")["arms"]["challenger"]["requests"] == 20
    assert restarted.traffic()["fraud"].salt == store.traffic()["fraud"].salt  # the same users, the same arms


def test_each_experiment_salts_the_routing_key_with_a_secret_kept_server_side(tmp_path):
    store = _store(tmp_path)
    salt = store.traffic()["fraud"].salt
    assert len(salt) == 32 and salt != "fraud" and salt != _store(tmp_path / "other").traffic()["fraud"].salt
    assert salt not in json.dumps(store.summary("fraud"), default=str)  # never shown to clients
    store.configure("fraud", TRAFFIC.model_copy(update={"challenger": 3}))  # a new pair: a new experiment
    assert store.traffic()["fraud"].salt != salt


def test_unwritable_storage_does_not_fail_feedback(tmp_path):
    store = _store(tmp_path)
    store.record([RequestEvent(model="fraud", request_id="a", version=1, latency_ms=1.0, error=False)])
    (tmp_path / "experiments" / "fraud.json").unlink()
    (tmp_path / "experiments").rmdir()
    (tmp_path / "experiments").write_text("a file where the folder should be")
    assert store.feedback("fraud", "a", reward=1.0)["known"] is True  # answered; the save retries later
    (tmp_path / "experiments").unlink()
    store.flush()
    assert (tmp_path / "experiments" / "fraud.json").exists()
