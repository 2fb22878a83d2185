"""The monitor: rows per (model, version) gathered into windows, each checked; the episode state
(K drifting windows in a row raise one alert, a clean window clears it); every check appended to
the `drift` Parquet table."""

from __future__ import annotations

import datetime
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from serve_app.config import DriftSettings
from serve_app.drift.detectors import Detectors, detectors_for
from serve_app.messages import DriftBatch
from serve_app.predlog import DRIFT, ParquetLog, read_table
from serve_app.repository import ModelVersion
from serve_app.runtime.batching import merge_rows
from serve_app.storage import read_json, write_json

logger = logging.getLogger("serve_app.drift")


@dataclass
class VersionState:
    model: str
    version: int
    arm: str = ""
    detectors: Detectors | None = None
    status: str = "starting"
    """starting, ready, or the error that stopped its detectors from loading."""
    pending: list[tuple[dict[str, np.ndarray], np.ndarray]] = field(default_factory=list)
    pending_rows: int = 0
    window_opened_at: float | None = None
    rows_seen: int = 0
    rows_dropped: int = 0
    windows_checked: int = 0
    windows_drifting: int = 0
    consecutive_drift_windows: int = 0
    last: dict | None = None
    history: deque = field(default_factory=deque)

    def counters(self) -> dict[str, int]:
        return {
            k: getattr(self, k)
            for k in ("rows_seen", "rows_dropped", "windows_checked", "windows_drifting", "consecutive_drift_windows")
        }


def _state_file() -> str:
    return "drift-monitor/state.json"  # beside the drift table, not in it: readers take every file there


class DriftMonitor:
    """Windows, checks, episodes and history for every watched model version.

    observe() runs on the owner's event loop and only appends; check() runs in a worker thread
    (the detectors' CPU work) and returns the alerts to deliver and the episodes that cleared.
    """

    def __init__(
        self,
        settings: Mapping[str, DriftSettings],
        versions: list[ModelVersion],
        storage_uri: str | None = None,
        clock=time.time,
    ):
        self.settings = dict(settings)
        self.versions = {(v.name, v.version): v for v in versions if v.name in self.settings}
        self.states = {key: VersionState(*key) for key in self.versions}
        for state in self.states.values():
            state.history = deque(maxlen=self.settings[state.model].history_size)
        self.storage_uri = storage_uri
        # A fresh writer name per start: a restarted monitor must not overwrite the files it wrote before.
        self.log = ParquetLog(storage_uri, f"drift-monitor-{uuid.uuid4().hex[:12]}") if storage_uri else None
        self.clock = clock
        self.episodes: dict[str, dict] = {}
        """model -> the open episode: when it began, the drifting versions, the alert sent."""
        self.alerts: deque[dict] = deque(maxlen=20)
        self.cleared: deque[dict] = deque(maxlen=20)
        """Episodes that ended, newest last: when, since when, and why."""
        self._lock = threading.Lock()
        self._restore()

    # -- set-up --------------------------------------------------------------------------

    def load_detectors(self) -> None:
        """Load or build every version's detectors (seconds for online ones): call it in a thread."""
        for key, version in self.versions.items():
            state = self.states[key]
            try:
                state.detectors = detectors_for(version, self.settings[state.model])
                state.status = "ready"
                if state.detectors.mode != self.settings[state.model].mode:
                    logger.warning(
                        "drift of %s v%s: the bundle at %s is in %s mode; the config says %s",
                        *key,
                        state.detectors.source,
                        state.detectors.mode,
                        self.settings[state.model].mode,
                    )
            except Exception as error:  # one bad version must not stop the others being watched
                state.status = f"error: {error}"
                logger.exception("drift detectors of %s v%s could not be loaded", *key)

    # -- intake --------------------------------------------------------------------------

    def observe(self, batches: list[DriftBatch]) -> None:
        """Rows from the routers."""
        now = self.clock()
        with self._lock:
            for batch in batches:
                state = self.states.get((batch.model, batch.version))
                if state is None:
                    continue
                state.rows_dropped += batch.dropped
                rows = batch.rows
                if not rows:
                    continue
                state.arm = batch.arm or state.arm
                limit = self.settings[state.model].max_buffered_rows
                if state.pending_rows + rows > limit:  # checks fell behind: shed load, count it
                    state.rows_dropped += rows
                    continue
                state.rows_seen += rows
                state.pending.append((batch.columns, np.asarray(batch.scores, dtype=np.float64)))
                state.pending_rows += rows
                if state.window_opened_at is None:
                    state.window_opened_at = now

    def _take_window(self, state: VersionState, now: float) -> tuple[dict, np.ndarray] | None:
        settings = self.settings[state.model]
        full = state.pending_rows >= settings.window_size
        timed = (
            settings.window_s is not None
            and state.window_opened_at is not None
            and now - state.window_opened_at >= settings.window_s
            and state.pending_rows >= settings.min_window_size
        )
        if not (full or timed):
            return None
        columns, _ = merge_rows([c for c, _ in state.pending])
        scores = np.concatenate([s for _, s in state.pending])
        size = settings.window_size if full else len(scores)
        rest = len(scores) - size
        state.pending = [({k: v[size:] for k, v in columns.items()}, scores[size:])] if rest else []
        state.pending_rows = rest
        state.window_opened_at = now if rest else None
        return {k: v[:size] for k, v in columns.items()}, scores[:size]

    # -- checking ------------------------------------------------------------------------

    def check(self) -> list[dict]:
        """Check every window that is due. Returns the episode events: alerts and clears."""
        events: list[dict] = []
        checked = 0
        for state in self.states.values():
            if state.detectors is None:
                continue
            while True:
                with self._lock:
                    window = self._take_window(state, self.clock())
                if window is None:
                    break
                columns, scores = window
                try:
                    result = state.detectors.check(state.detectors.schema.encode(columns), scores)
                except Exception:  # rows the detectors cannot take must not stop the monitor
                    logger.exception("drift check of %s v%s failed; the window is skipped", state.model, state.version)
                    with self._lock:
                        state.rows_dropped += len(scores)
                    continue
                with self._lock:
                    events.extend(self._record(state, result, len(scores)))
                checked += 1
        if checked:
            self.save()
        return events

    def _record(self, state: VersionState, result: dict, rows: int) -> list[dict]:
        now = self.clock()
        is_drift = result["data"]["is_drift"] or result["prediction"]["is_drift"]
        state.windows_checked += 1
        state.windows_drifting += int(is_drift)
        state.consecutive_drift_windows = state.consecutive_drift_windows + 1 if is_drift else 0
        time_iso = _iso(now)
        state.last = {"time": time_iso, "window": state.windows_checked, "rows": rows, "is_drift": is_drift, **result}
        drifting = [name for name, f in result["data"]["features"].items() if f["is_drift"]]
        state.history.append(
            {
                "time": time_iso,
                "window": state.windows_checked,
                "rows": rows,
                "is_drift": is_drift,
                "data_drift": result["data"]["is_drift"],
                "prediction_drift": result["prediction"]["is_drift"],
                "drifting_features": drifting,
                "prediction_p_value": result["prediction"].get("p_value"),
                "p_values": {name: f.get("p_value") for name, f in result["data"]["features"].items()},
            }
        )
        self._log(state, result, rows, is_drift, now)
        return self._episode(state, is_drift, now)

    def _log(self, state: VersionState, result: dict, rows: int, is_drift: bool, now: float) -> None:
        if self.log is None:
            return
        when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
        common = {
            "time": when,
            "model": state.model,
            "version": state.version,
            "arm": state.arm,
            "window": state.windows_checked,
            "rows": rows,
            "window_drift": is_drift,
        }
        entries = [("feature", name, f) for name, f in result["data"]["features"].items()]
        entries.append(("prediction", "score", result["prediction"]))
        for kind, name, f in entries:
            default = result["data"]["threshold"] if kind == "feature" else self.settings[state.model].p_val
            row = {
                "kind": kind,
                "name": name,
                "test": f["test"],
                "statistic": f["statistic"],
                "p_value": f["p_value"],
                "threshold": f.get("threshold", default),
                "is_drift": f["is_drift"],
            }
            self.log.record(DRIFT, {**common, **row})

    def _episode(self, state: VersionState, is_drift: bool, now: float) -> list[dict]:
        """K drifting windows in a row open an episode with one alert; clean windows from every
        drifting version close it. A model has one episode at a time, whichever versions drift."""
        settings = self.settings[state.model]
        episode = self.episodes.get(state.model)
        if is_drift and state.consecutive_drift_windows >= settings.alert_after_windows:
            if episode is None:
                evidence = list(state.history)[-settings.alert_after_windows :]
                alert = {
                    "event": "drift",
                    "model": state.model,
                    "version": state.version,
                    "arm": state.arm,
                    "time": _iso(now),
                    "windows": settings.alert_after_windows,
                    "evidence": evidence,
                    "last_window": state.last,
                    "message": (
                        f"{state.model} v{state.version} ({state.arm or 'unrouted'}): drift in "
                        f"{settings.alert_after_windows} windows in a row; features "
                        f"{evidence[-1]['drifting_features'] or 'none'}, prediction drift "
                        f"{evidence[-1]['prediction_drift']}"
                    ),
                }
                self.episodes[state.model] = {"since": _iso(now), "versions": [state.version], "alert": alert}
                self.alerts.append(alert)
                logger.warning("drift alert: %s", alert["message"])
                return [alert]
            if state.version not in episode["versions"]:
                episode["versions"].append(state.version)
        elif not is_drift and episode is not None and state.version in episode["versions"]:
            episode["versions"].remove(state.version)
            if not episode["versions"]:
                return [self._clear(state.model, now, f"v{state.version}'s window {state.windows_checked} is clean")]
        return []

    def _clear(self, model: str, now: float, reason: str) -> dict:
        episode = self.episodes.pop(model)
        event = {"event": "cleared", "model": model, "time": _iso(now), "since": episode["since"], "reason": reason}
        self.cleared.append(event)
        logger.warning("drift of %s cleared: %s", model, reason)
        return event

    # -- state and reports ---------------------------------------------------------------

    def save(self) -> None:
        """Counters, episodes and recent history survive a restart; checks go to the Parquet log."""
        if self.storage_uri is None:
            return
        with self._lock:  # copied whole under the lock: the event loop may change alerts meanwhile
            document = json.loads(
                json.dumps(
                    {
                        "episodes": self.episodes,
                        "alerts": list(self.alerts),
                        "cleared": list(self.cleared),
                        "versions": {
                            f"{m}/{v}": {**s.counters(), "arm": s.arm, "last": s.last, "history": list(s.history)}
                            for (m, v), s in self.states.items()
                        },
                    }
                )
            )
        try:
            write_json(self.storage_uri, _state_file(), document)
        except Exception as error:  # storage trouble must not stop the checks; the next save retries
            logger.warning("drift monitor: saving state failed, will retry: %s", error)
        if self.log is not None:  # apart: the history is written even while the state cannot be
            self.log.flush()  # ParquetLog keeps what it cannot write and retries; it never raises

    def _restore(self) -> None:
        if self.storage_uri is None:
            return
        document = read_json(self.storage_uri, _state_file()) or {}
        self.alerts.extend(document.get("alerts", []))
        self.cleared.extend(document.get("cleared", []))
        for model, episode in document.get("episodes", {}).items():
            if model not in self.settings:
                continue
            self.episodes[model] = episode
            # A version no longer served (unloaded once another replaced it) never sends the clean
            # window that would close the episode: it leaves it, and the episode ends with the last.
            gone = [v for v in episode["versions"] if (model, v) not in self.states]
            episode["versions"] = [v for v in episode["versions"] if v not in gone]
            if not episode["versions"]:
                self._clear(model, self.clock(), f"{', '.join(f'v{v}' for v in gone)} no longer served")
        for key, saved in document.get("versions", {}).items():
            model, _, version = key.rpartition("/")
            state = self.states.get((model, int(version)))
            if state is None:
                continue
            for name, value in saved.items():
                if name == "history":
                    state.history.extend(value)
                elif hasattr(state, name):
                    setattr(state, name, value)

    def shutdown(self) -> None:
        """At a stop: rows still waiting for their window will not be checked; count them as dropped."""
        with self._lock:
            for state in self.states.values():
                state.rows_dropped += state.pending_rows
                state.pending, state.pending_rows, state.window_opened_at = [], 0, None
        self.save()

    def delivered(self, alert: dict, outcome: dict[str, str]) -> None:
        with self._lock:
            alert["delivery"] = outcome
        self.save()

    def undelivered_alerts(self) -> list[dict]:
        """Alerts of open episodes that a restart interrupted before they were sent."""
        with self._lock:
            open_alerts = [e["alert"] for e in self.episodes.values()]
            return [a for a in self.alerts if "delivery" not in a and a in open_alerts]

    def report(self, model: str) -> dict:
        settings = self.settings[model]
        with self._lock:
            versions = {
                str(s.version): {
                    "arm": s.arm,
                    "detectors": s.status,
                    "source": s.detectors.source if s.detectors else None,
                    "mode": s.detectors.mode if s.detectors else settings.mode,
                    "backend": s.detectors.backend if s.detectors else None,
                    **s.counters(),
                    "rows_pending": s.pending_rows,
                    "window_size": settings.window_size,
                    "last": s.last,
                    "history": list(s.history),
                }
                for s in self.states.values()
                if s.model == model
            }
            return {
                "model": model,
                "alert_after_windows": settings.alert_after_windows,
                "on_drift": settings.on_drift,
                "episode": self.episodes.get(model),
                "alerts": [a for a in self.alerts if a["model"] == model],
                "cleared": [c for c in self.cleared if c["model"] == model],
                "versions": versions,
            }

    def history(self, model: str | None = None) -> pd.DataFrame:
        """Every check logged under the storage URI, as a table (for notebooks and reports)."""
        return drift_history(self.storage_uri, model)


def drift_history(storage_uri: str, model: str | None = None) -> pd.DataFrame:
    return read_table(storage_uri, DRIFT, model).to_pandas().sort_values(["time", "version", "kind", "name"])


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat()
