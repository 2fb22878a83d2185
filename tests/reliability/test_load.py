"""A bounded soak of the full graph. `make soak` runs it longer (SOAK_SECONDS)."""

from __future__ import annotations

import os
import time
from collections import Counter

from tests.helpers import wait_until
from tests.reliability.harness import MIB, Load, MemorySampler, app_processes, logged_once

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))
CONCURRENCY = 64
WARMUP_S = min(max(15.0, SOAK_SECONDS / 4), SOAK_SECONDS / 2)
"""The drift monitor's first checks load its detectors' code and buffers (~150 MiB, within ~10 s)."""
ALLOWED_GROWTH = 24 * MIB
"""Per process, after warm-up: allocator noise over a short soak, far below a leak of even a few
hundred bytes per request over a long one (`make soak`)."""


def test_soak_at_64_clients_no_5xx_flat_memory_and_an_exact_log(full_graph, full_graph_args, reliability):
    row = reliability("Load", f"{CONCURRENCY} clients back to back for {SOAK_SECONDS:.0f} s on the full graph")
    processes = app_processes()
    with MemorySampler(processes) as memory, Load(full_graph, CONCURRENCY, prefix="soak") as load:
        time.sleep(SOAK_SECONDS)
    answered = load.answered
    statuses = Counter(a.status for a in load.answers)
    latencies = sorted(a.latency_s for a in answered)
    row.measured["requests"] = f"{len(load.answers):,} ({len(load.answers) / SOAK_SECONDS:.0f}/s)"
    row.measured["non-200"] = str(sum(n for status, n in statuses.items() if status != 200))
    row.measured["p99"] = f"{1000 * latencies[int(0.99 * (len(latencies) - 1))]:.0f} ms"
    growth = memory.growth_after(WARMUP_S)
    largest = max(growth, key=lambda name: growth[name][1] - growth[name][0])
    warm, peak = growth[largest]
    who = largest.split("#")[1] if "#" in largest else largest.split("-")[0]  # the deployment, or Serve's actor
    row.measured["memory"] = f"{len(growth)} processes, top growth past warm-up {(peak - warm) / MIB:+.1f} MiB ({who})"
    print("memory growth after warm-up:", {name: f"{(p - w) / MIB:+.1f} MiB" for name, (w, p) in growth.items()})
    assert statuses == {200: len(load.answers)}, load.summary()
    assert peak - warm <= ALLOWED_GROWTH, {name: f"{(p - w) / MIB:+.1f} MiB" for name, (w, p) in growth.items()}
    # Every answered request is in the prediction log exactly once (routers flush each second).
    ids = wait_until(lambda: logged_once(full_graph_args["storage_uri"], "soak", answered), 30)
    row.measured["prediction log"] = f"{len(ids):,} production rows for {len(answered):,} answers"
    assert sorted(ids) == sorted(a.request_id for a in answered)
