"""serve-app's Prometheus metrics, through ray.serve.metrics (Ray exports them as ray_<name>, and
counters with a _total suffix). Names and labels are listed in docs/operations.md, "Metrics"."""

from __future__ import annotations

from collections import Counter

from ray.serve import metrics

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


class RouterMetrics:
    """Per request and shadow call, in the router replica."""

    def __init__(self) -> None:
        arm = ("model", "version", "arm")
        self.requests = metrics.Counter("serve_app_requests", "answered inference requests", tag_keys=arm)
        self.failures = metrics.Counter("serve_app_request_failures", "inference requests that failed", tag_keys=arm)
        self.latency = metrics.Histogram(
            "serve_app_request_latency_ms",
            "router-to-answer latency of inference requests",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=arm,
        )
        self.shed_requests = metrics.Counter(
            "serve_app_requests_shed",
            "inference requests refused with 503 because a version's queue was full",
            tag_keys=("model",),
        )
        shadow = ("model", "version")
        self.shadow_calls = metrics.Counter("serve_app_shadow_requests", "mirrored requests sent", tag_keys=shadow)
        self.shadow_failures = metrics.Counter("serve_app_shadow_failures", "mirrored requests failed", tag_keys=shadow)
        self.compared_rows = metrics.Counter(
            "serve_app_shadow_compared_rows", "mirrored rows whose decision was compared", tag_keys=shadow
        )
        self.disagreements = metrics.Counter(
            "serve_app_shadow_disagreements", "mirrored rows whose decision differs from production's", tag_keys=shadow
        )

        self.log_rows = metrics.Counter(
            "serve_app_log_rows",
            "prediction log rows by outcome: written, or dropped while storage failed",
            tag_keys=("outcome",),
        )
        self.log_failures = metrics.Counter("serve_app_log_write_failures", "prediction log writes that failed")
        self.log_buffered = metrics.Gauge("serve_app_log_buffered_rows", "prediction log rows waiting for storage")
        self._log_counted = {"written": 0, "dropped": 0, "failures": 0}
        self._answered: Counter[tuple[str, int, str]] = Counter()
        self._failed: Counter[tuple[str, int, str]] = Counter()
        self._tags: dict[tuple[str, int, str], dict[str, str]] = {}

    def log(self, stats: dict) -> None:
        """The prediction log's counts (ParquetLog.stats()), as they stand after a flush."""
        for outcome in ("written", "dropped"):
            if stats[outcome] > self._log_counted[outcome]:
                self.log_rows.inc(stats[outcome] - self._log_counted[outcome], tags={"outcome": outcome})
        if stats["failures"] > self._log_counted["failures"]:
            self.log_failures.inc(stats["failures"] - self._log_counted["failures"])
        self._log_counted = {key: stats[key] for key in self._log_counted}
        self.log_buffered.set(stats["buffered"])

    def request(self, model: str, version: int, arm: str, latency_ms: float, ok: bool) -> None:
        """Counted here and added to Ray's counters by flush(): a call per version and arm each
        second, not one per request (each costs a tag check and a record in Ray's metrics agent)."""
        key = (model, version, arm)
        if ok:
            self._answered[key] += 1
            self.latency.observe(latency_ms, tags=self._tags_of(key))
        else:
            self._failed[key] += 1

    def flush(self) -> None:
        """The requests counted since the last flush, into Ray's counters (the router's background
        loop calls it every second, and once more at shutdown)."""
        for counts, counter in ((self._answered, self.requests), (self._failed, self.failures)):
            for key, count in counts.items():
                counter.inc(count, tags=self._tags_of(key))
            counts.clear()

    def _tags_of(self, key: tuple[str, int, str]) -> dict[str, str]:
        tags = self._tags.get(key)
        if tags is None:
            model, version, arm = key
            tags = self._tags[key] = {"model": model, "version": str(version), "arm": arm}
        return tags

    def shed(self, model: str) -> None:
        self.shed_requests.inc(tags={"model": model})

    def shadow(self, model: str, version: int, ok: bool, compared: int = 0, disagreed: int = 0) -> None:
        tags = {"model": model, "version": str(version)}
        self.shadow_calls.inc(tags=tags)
        if not ok:
            self.shadow_failures.inc(tags=tags)
        if compared:
            self.compared_rows.inc(compared, tags=tags)
        if disagreed:
            self.disagreements.inc(disagreed, tags=tags)


class ModelMetrics:
    """Per model call, in the model replica: Triton's inference and execution counts (their ratio is
    the average batch size in rows), and where a request's time went."""

    def __init__(self, model: str, version: int) -> None:
        tags = ("model", "version")
        self.tags = {"model": model, "version": str(version)}
        self.rows = metrics.Counter("serve_app_inference_count", "rows scored", tag_keys=tags)
        self.executions = metrics.Counter("serve_app_execution_count", "model calls (batches) run", tag_keys=tags)
        self.queue = metrics.Histogram(
            "serve_app_queue_ms", "time a request waited for its batch", boundaries=LATENCY_BOUNDARIES_MS, tag_keys=tags
        )
        self.compute = metrics.Histogram(
            "serve_app_compute_ms", "time of one model call", boundaries=LATENCY_BOUNDARIES_MS, tag_keys=tags
        )

    def batch(self, rows: int, compute_ms: float, queue_ms: list[float]) -> None:
        self.rows.inc(rows, tags=self.tags)
        self.executions.inc(tags=self.tags)
        self.compute.observe(compute_ms, tags=self.tags)
        for waited in queue_ms:
            self.queue.observe(waited, tags=self.tags)


class ExperimentMetrics:
    """The experiment store's weights and decisions."""

    def __init__(self) -> None:
        self.weight = metrics.Gauge(
            "serve_app_experiment_weight",
            "share of production traffic per version",
            tag_keys=("model", "version", "arm"),
        )
        self.decisions = metrics.Counter(
            "serve_app_experiment_decisions",
            "actions in the experiment's history (promote, rollback, stop...)",
            tag_keys=("model", "decision"),
        )
        self._shown: dict[str, set[tuple[str, str]]] = {}

    def traffic(self, model: str, champion: int, challenger: int | None, challenger_weight: float) -> None:
        """The current split; a version that left it (promoted, rolled back) shows 0, not its old share."""
        weights = {(str(champion), "champion"): 1.0 - challenger_weight}
        if challenger is not None:
            weights[str(challenger), "challenger"] = challenger_weight
        for version, arm in self._shown.get(model, set()) - set(weights):
            self.weight.set(0.0, tags={"model": model, "version": version, "arm": arm})
        for (version, arm), weight in weights.items():
            self.weight.set(weight, tags={"model": model, "version": version, "arm": arm})
        self._shown[model] = self._shown.get(model, set()) | set(weights)

    def decision(self, model: str, decision: str) -> None:
        self.decisions.inc(tags={"model": model, "decision": decision})
