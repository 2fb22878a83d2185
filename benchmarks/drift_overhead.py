"""What drift monitoring costs: serving throughput with the drift monitor on and off, in one run, and
the detectors' own cost.

    python benchmarks/drift_overhead.py [--duration-s 15] [--concurrency 8 32] [--rounds 2] [--budget-s 300]

Part 1 serves the demo's fraud model through graphs.champion_challenger on a local Ray cluster and
deploys the same app twice over, differing only in the `drift` args (off: none; on: the fraud model
watched in windows of 1,000 rows). Each is driven from a separate load-generator process with
single-row requests; off and on alternate for --rounds rounds and the medians are compared.

Part 2 times, in this process, a window check of 1,000 rows with 10 features (7 numeric, 3
categorical: TabularDrift plus KSDrift on the scores) and the online detectors per row.
Writes benchmarks/results/drift_overhead-<date>.json. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import ray
from common import demo_workdir, drive, median_point, result_header, round_fits, start_serve, write_result
from ray import serve

from graphs.champion_challenger import build_app
from serve_app.config import DriftSettings
from serve_app.drift import Detectors, FeatureSchema

HERE = Path(__file__).parent
MODEL = "fraud"
APP = "bench"
DRIFT = {MODEL: {"window_size": 1000, "alert_after_windows": 2}}


def app_args(repository: Path, storage: Path, mode: str) -> dict:
    args = {
        "repository": str(repository),
        "storage_uri": str(storage),
        "models": [MODEL],
        "experiments": {MODEL: {"traffic": {"champion": 1}}},
    }
    return {**args, "drift": DRIFT} if mode == "on" else args


def deploy(args: dict, mode: str, port: int) -> None:
    serve.run(build_app(args), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/drift"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # on: until the monitor answers; off: until the route says it has none
        status = httpx.get(url, timeout=5).status_code
        if status == (200 if mode == "on" else 404):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the '{mode}' app never became ready")


def serving(args: argparse.Namespace, started: float) -> tuple[list[dict], dict, dict]:
    repository, storage, body = demo_workdir()
    port = start_serve()
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
    points, round_s, report = [], 0.0, {}
    for round_index in range(1, args.rounds + 1):
        if not round_fits(round_index, time.monotonic() - started, round_s, args.budget_s):
            break
        round_started = time.monotonic()
        for mode in ("off", "on"):
            deploy(app_args(repository, storage, mode), mode, port)
            for concurrency in args.concurrency:
                result = drive(url, body, concurrency, args.duration_s, args.warmup_s)
                points.append({"drift": mode, "round": round_index, **result})
            if mode == "on":
                report = httpx.get(f"http://127.0.0.1:{port}/v2/models/{MODEL}/drift", timeout=10).json()
        round_s = time.monotonic() - round_started
    serve.shutdown()
    ray.shutdown()
    medians = {}
    for concurrency in args.concurrency:
        at = {m: [p for p in points if p["drift"] == m and p["concurrency"] == concurrency] for m in ("off", "on")}
        off, on = median_point(at["off"]), median_point(at["on"])
        ratios = [
            on_point["requests_per_s"] / off_point["requests_per_s"] for off_point, on_point in zip(at["off"], at["on"])
        ]
        medians[str(concurrency)] = {"off": off, "on": on, "throughput_ratio": round(statistics.median(ratios), 3)}
    monitor = {
        v: {k: s[k] for k in ("rows_seen", "rows_dropped", "windows_checked")} for v, s in report["versions"].items()
    }
    return points, medians, monitor


def detector_costs(repeats: int) -> dict:
    """A 1,000-row window with 10 features, and the online detectors per row, timed in-process."""
    rng = np.random.default_rng(0)

    def frame(rows: int, shift: float = 0.0) -> pd.DataFrame:
        data = {f"x{i}": rng.normal(shift, 1.0, rows) for i in range(7)}
        data.update({f"c{i}": rng.choice(["a", "b", "c", "d", "e"], rows) for i in range(3)})
        return pd.DataFrame(data)

    reference = frame(5000)
    schema = FeatureSchema.of_frame(reference, list(reference.columns))
    x_ref, scores_ref = schema.encode(reference), rng.random(5000)
    window = frame(1000, shift=0.1)
    costs: dict = {}
    detectors = Detectors.build(schema, x_ref, scores_ref, DriftSettings())
    encode_s, check_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        x = schema.encode(window)
        encode_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        detectors.check(x, rng.random(1000))
        check_s.append(time.perf_counter() - start)
    costs["window_1000_rows_10_features"] = {
        "encode_ms": round(1000 * statistics.median(encode_s), 2),
        "check_ms": round(1000 * statistics.median(check_s), 2),
    }
    # Online detectors on a 1,000-row reference: configuring CVM's thresholds grows with its square.
    numeric_only = FeatureSchema.of_frame(reference, [f"x{i}" for i in range(5)])
    x_numeric = numeric_only.encode(reference.iloc[:1000])
    rows = numeric_only.encode(frame(500))
    for detector in ("cvm", "mmd"):
        settings = DriftSettings(mode="online", online_detector=detector, ert=500, online_window_size=50)
        start = time.perf_counter()
        online = Detectors.build(numeric_only, x_numeric, scores_ref, settings)
        configured_s = time.perf_counter() - start
        start = time.perf_counter()
        online._online_window("numeric", rows)
        per_row_us = 1e6 * (time.perf_counter() - start) / len(rows)
        costs[f"online_{detector}_5_features"] = {
            "ert": settings.ert,
            "reference_rows": len(x_numeric),
            "configure_s": round(configured_s, 1),
            "per_row_us": round(per_row_us, 1),
            "rows_per_s": round(1e6 / per_row_us),
        }
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=15.0, help="measured seconds per point")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="off/on rounds, run while the budget allows")
    parser.add_argument("--budget-s", type=float, default=300.0, help="seconds for the serving part")
    parser.add_argument("--repeats", type=int, default=20, help="window checks timed")
    args = parser.parse_args()
    started = time.monotonic()
    points, medians, monitor = serving(args, started)
    costs = detector_costs(args.repeats)
    result = {
        **result_header("drift_overhead"),
        "model": MODEL,
        "drift": DRIFT,
        "duration_s": args.duration_s,
        "points": points,
        "medians": medians,
        "monitor": monitor,
        "detector_costs": costs,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    out = write_result(result)
    print("| concurrency | req/s off | req/s on | on / off | p50 ms off | p50 ms on | p99 ms off | p99 ms on |")
    print("|---|---|---|---|---|---|---|---|")
    for concurrency, m in medians.items():
        off, on = m["off"], m["on"]
        print(
            f"| {concurrency} | {off['requests_per_s']} | {on['requests_per_s']} | **{m['throughput_ratio']:.3f}** |",
            f"{off['p50_ms']} | {on['p50_ms']} | {off['p99_ms']} | {on['p99_ms']} |",
        )
    print(f"\nmonitor during the last 'on' run: {monitor}")
    print(f"detector costs: {json.dumps(costs)}")
    print(f"elapsed {result['elapsed_s']} s; written to {out}")


if __name__ == "__main__":
    main()
