"""A version's counters, as Triton's statistics extension defines them, in plain numbers.

Who counts what (each field has exactly one kind of counter, so summing every replica's report
gives the application's totals):
- a router, per client request it answered with the version: `success` and `fail` (count and the
  time from the router's data plane to the answer), `inference_count` (rows of the successful
  requests) and `last_inference`;
- the process that runs the version (a model replica, or a router for a model in_router), per
  call it received: `queue` (waiting for its batch), `compute_input` (preprocessing and checks),
  `compute_infer` (the model call), and per execution `execution_count` and the batch statistics.
  As in Triton, each call in a batch is charged the batch's whole compute time;
- a router's merger (batching before the hop), per client request: `queue` too, the time it
  waited for a call.
With merging, several client requests travel to the model as one call, so the compute counts can
be smaller than `success.count`; the average batch size is `inference_count / execution_count`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def __add__(self, other: Duration) -> Duration:
        return Duration(self.count + other.count, self.ns + other.ns)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class BatchDurations:
    """One batch size's executions."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)

    def __add__(self, other: BatchDurations) -> BatchDurations:
        return BatchDurations(
            self.compute_input + other.compute_input,
            self.compute_infer + other.compute_infer,
            self.compute_output + other.compute_output,
        )


@dataclass
class VersionStatistics:
    model: str
    version: int
    last_inference_ms: int = 0
    """When the last request succeeded, in milliseconds since the epoch (0: never)."""
    inference_count: int = 0
    """Rows answered."""
    execution_count: int = 0
    """Model executions (batches)."""
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchDurations] = field(default_factory=dict)
    """Per batch size in rows."""

    def request(self, rows: int, ok: bool, ns: int, now_ms: int) -> None:
        """A client request answered (a router counts it)."""
        if ok:
            self.success.add(ns)
            self.inference_count += rows
            self.last_inference_ms = max(self.last_inference_ms, now_ms)
        else:
            self.fail.add(ns)

    def execution(self, rows: int, calls: int, queue_ns: int, input_ns: int, infer_ns: int) -> None:
        """One model execution of `rows` rows for `calls` calls, which waited `queue_ns` and were
        prepared in `input_ns` (both summed over the calls); the model took `infer_ns` (the
        process that runs the model counts it)."""
        self.execution_count += 1
        self.queue.add(queue_ns, calls)
        self.compute_input.add(input_ns, calls)
        self.compute_infer.add(infer_ns * calls, calls)
        self.compute_output.add(0, calls)  # outputs are handed back as they are: nothing to time
        batch = self.batches.setdefault(rows, BatchDurations())
        batch.compute_input.add(input_ns)
        batch.compute_infer.add(infer_ns)
        batch.compute_output.add(0)

    @property
    def executed_rows(self) -> int:
        """Rows the model ran (inference_count counts answered requests' rows, at the router)."""
        return sum(rows * batch.compute_infer.count for rows, batch in self.batches.items())

    def __add__(self, other: VersionStatistics) -> VersionStatistics:
        batches = dict(self.batches)
        for rows, durations in other.batches.items():
            batches[rows] = batches[rows] + durations if rows in batches else durations
        return VersionStatistics(
            self.model,
            self.version,
            max(self.last_inference_ms, other.last_inference_ms),
            self.inference_count + other.inference_count,
            self.execution_count + other.execution_count,
            self.success + other.success,
            self.fail + other.fail,
            self.queue + other.queue,
            self.compute_input + other.compute_input,
            self.compute_infer + other.compute_infer,
            self.compute_output + other.compute_output,
            batches,
        )

    def as_triton(self) -> dict:
        """Triton's JSON form of ModelStatistics (GET /v2/models/{name}/stats; gRPC the same fields)."""
        stages = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
        inference_stats = {stage: getattr(self, stage).as_dict() for stage in stages}
        inference_stats |= {"cache_hit": Duration().as_dict(), "cache_miss": Duration().as_dict()}
        return {
            "name": self.model,
            "version": str(self.version),
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": inference_stats,
            "batch_stats": [
                {
                    "batch_size": rows,
                    "compute_input": batch.compute_input.as_dict(),
                    "compute_infer": batch.compute_infer.as_dict(),
                    "compute_output": batch.compute_output.as_dict(),
                }
                for rows, batch in sorted(self.batches.items())
            ],
        }
