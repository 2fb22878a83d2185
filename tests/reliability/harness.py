"""What the reliability tests drive at the full graph and what they watch: load, memory, the log."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field

import httpx
import psutil
from ray.util.state import list_actors

from serve_app.demo import request_columns, synthetic_transactions
from serve_app.predlog import PREDICTIONS, read_table
from serve_app.protocol.rest import request_body

APP = "reliability"
PREFIX = f"/{APP}"
BODY = request_body(request_columns(synthetic_transactions(1, seed=11)))
MIB = 1024 * 1024


@dataclass
class Answer:
    request_id: str
    sent_at: float
    latency_s: float
    status: int
    """0: no HTTP answer at all (connection error or client timeout)."""
    version: str | None = None
    error: str | None = None


@dataclass
class Load:
    """`concurrency` clients sending back to back from one event loop on a thread of its own.
    Each request carries the id `<prefix>-<n>`, so the prediction log can be matched to it."""

    url: str
    concurrency: int
    prefix: str
    answers: list[Answer] = field(default_factory=list)
    timeout_s: float = 30.0

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._ids = itertools.count()

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self.concurrency)
        async with httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s, limits=limits) as http:
            await asyncio.gather(*(self._client(http) for _ in range(self.concurrency)))

    async def _client(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            n = next(self._ids)
            sent_at, request_id = time.monotonic(), f"{self.prefix}-{n}"
            body = {**BODY, "id": request_id}
            try:
                response = await http.post("/v2/models/fraud/infer", json=body, headers={"x-routing-key": f"u{n}"})
            except httpx.HTTPError as error:
                self.answers.append(Answer(request_id, sent_at, time.monotonic() - sent_at, 0, error=repr(error)))
                continue
            answer = Answer(request_id, sent_at, time.monotonic() - sent_at, response.status_code)
            if response.status_code == 200:
                answer.version = response.headers["x-model-version"]
            else:
                answer.error = response.text[:200]
            self.answers.append(answer)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 30)

    @property
    def answered(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 200]

    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]

    def summary(self) -> str:
        failed = self.failures()
        return f"{len(failed)} of {len(self.answers):,} failed" + (f" (first: {failed[0].error})" if failed else "")


def app_processes(app: str = APP) -> dict[str, int]:
    """The live processes of an application's replicas, and Serve's proxy and controller: name -> pid."""
    processes = {}
    for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000):
        if actor.class_name.startswith(f"ServeReplica:{app}:") or actor.class_name in ("ProxyActor", "ServeController"):
            processes[actor.name or actor.class_name] = actor.pid
    return processes


class MemorySampler:
    """Resident memory of some processes, sampled on a thread of its own."""

    def __init__(self, processes: dict[str, int], interval_s: float = 1.0):
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.samples.append((time.monotonic(), {n: p.memory_info().rss for n, p in self.processes.items()}))

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def growth_after(self, warmup_s: float) -> dict[str, tuple[int, int]]:
        """Per process: (RSS when the warm-up ended, the most RSS after it)."""
        start = self.samples[0][0] + warmup_s
        after = [sample for t, sample in self.samples if t >= start]
        return {name: (after[0][name], max(sample[name] for sample in after)) for name in after[0]}


def logged_ids(
    storage_uri: str, prefix: str, roles: tuple[str, ...] = ("champion", "challenger"), ok_only: bool = False
) -> list[str]:
    """Request ids with that prefix in the prediction log, one per row, for the given roles."""
    table = read_table(storage_uri, PREDICTIONS, "fraud").to_pandas()
    rows = table[table["role"].isin(roles) & table["request_id"].str.startswith(f"{prefix}-")]
    if ok_only:
        rows = rows[rows["status"] == "ok"]
    return list(rows["request_id"])


def logged_once(storage_uri: str, prefix: str, answered: list[Answer]) -> list[str] | None:
    """The logged production ids with that prefix once there are as many as answers, else None."""
    ids = logged_ids(storage_uri, prefix)
    return ids if len(ids) >= len(answered) else None
