"""What shadow mirroring costs a client: the champion/challenger graph with and without a shadow, in one run.

    python benchmarks/shadow_latency.py [--duration-s 15] [--concurrency 1 8] [--rounds 2] [--budget-s 240]

Serves the demo's fraud model through graphs.champion_challenger on a local Ray cluster and
deploys the same app twice over, differing only in the experiment's traffic: champion v1 alone
(shadow off), then champion v1 with every request mirrored to v2 (shadow on). Each is driven
from a separate load-generator process with single-row requests; off and on alternate for
--rounds rounds while the --budget-s wall-clock budget allows, and the medians are reported.
The prediction log is read back to count the shadow rows written next to the production rows.
Writes benchmarks/results/shadow_latency-<date>.json. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import ray
from common import demo_workdir, drive, median_point, result_header, round_fits, start_serve, write_result
from ray import serve

from graphs.champion_challenger import build_app
from serve_app.gateway import BACKGROUND_INTERVAL_S
from serve_app.predlog import PREDICTIONS, read_table

HERE = Path(__file__).parent
MODEL = "fraud"
APP = "bench"
# TrafficSettings refuses a shadow that also serves production, so both modes run the champion
# alone: the only difference between them is the mirroring.
TRAFFIC = {
    "off": {"champion": 1, "challenger": None, "challenger_weight": 0.0},
    "on": {"champion": 1, "challenger": None, "challenger_weight": 0.0, "shadows": [2], "shadow_fraction": 1.0},
}
TIMESTAMP = pa.timestamp("us", tz="UTC")


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def app_args(repository: Path, storage: Path, mode: str) -> dict:
    return {
        "repository": str(repository),
        "storage_uri": str(storage),
        "models": [MODEL],
        "experiments": {MODEL: {"traffic": TRAFFIC[mode]}},
    }


def deploy(args: dict, mode: str, port: int) -> None:
    """(Re)deploy the app and wait until the routers route by this mode's traffic."""
    serve.run(build_app(args), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/experiment"
    deadline = time.monotonic() + 60
    while True:
        try:
            traffic = httpx.get(url, timeout=5).json()["traffic"]
            if traffic["shadows"] == TRAFFIC[mode].get("shadows", []) and traffic["challenger"] is None:
                break
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the experiment store never took the '{mode}' traffic")
        time.sleep(0.2)
    # A router takes the store's traffic on its next background round; the load generator's warm-up follows.
    time.sleep(1.5 * BACKGROUND_INTERVAL_S)


def logged_rows(storage: Path, since: datetime.datetime, until: datetime.datetime) -> dict:
    """Prediction-log rows recorded in [since, until): production rows, shadow rows, shadows answered."""
    table = read_table(str(storage), PREDICTIONS, MODEL)
    window = pc.and_(
        pc.greater_equal(table["time"], pa.scalar(since, TIMESTAMP)),
        pc.less(table["time"], pa.scalar(until, TIMESTAMP)),
    )
    table = table.filter(window)
    shadow = pc.equal(table["role"], "shadow")
    shadows = table.filter(shadow)
    return {
        "production_rows": table.num_rows - shadows.num_rows,
        "shadow_rows": shadows.num_rows,
        "shadow_ok": pc.sum(pc.equal(shadows["status"], "ok").cast(pa.int64())).as_py() or 0,
        "shadow_versions": sorted(set(shadows["version"].to_pylist())),
    }


def wait_for_log(storage: Path, since: datetime.datetime, timeout_s: float = 15.0) -> None:
    """Until the routers' background flushes stop adding rows to the window that began at `since`."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        time.sleep(1.5 * BACKGROUND_INTERVAL_S)
        rows = read_table(str(storage), PREDICTIONS, MODEL).num_rows
        if rows == last:
            return
        last = rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=15.0, help="measured seconds per point")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="load generator warm-up per point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2, help="off/on rounds, run while the budget allows")
    parser.add_argument(
        "--budget-s", type=float, default=240.0, help="seconds in all; rounds that cannot fit are skipped"
    )
    args = parser.parse_args()
    started = time.monotonic()

    repository, storage, body = demo_workdir()
    port = start_serve()
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
    points: list[dict] = []
    windows: list[dict] = []
    round_s = 0.0
    for round_index in range(1, args.rounds + 1):
        if not round_fits(round_index, time.monotonic() - started, round_s, args.budget_s):
            break
        round_started = time.monotonic()
        for mode in ("off", "on"):
            deploy(app_args(repository, storage, mode), mode, port)
            since = utc_now()
            for concurrency in args.concurrency:
                result = drive(url, body, concurrency, args.duration_s, args.warmup_s)
                points.append({"traffic": mode, "round": round_index, **result})
            windows.append({"traffic": mode, "round": round_index, "since": since})
        round_s = time.monotonic() - round_started
    # Read the prediction log back after the last shadow-on run, once the routers have flushed it.
    wait_for_log(storage, windows[-1]["since"])
    ends = [w["since"] for w in windows[1:]] + [utc_now()]
    prediction_log = [
        {"traffic": w["traffic"], "round": w["round"], "since": str(w["since"]), "until": str(end)}
        | logged_rows(storage, w["since"], end)
        for w, end in zip(windows, ends)
    ]
    serve.shutdown()
    ray.shutdown()

    medians = {}
    for concurrency in args.concurrency:
        at = {m: [p for p in points if p["traffic"] == m and p["concurrency"] == concurrency] for m in TRAFFIC}
        off, on = median_point(at["off"]), median_point(at["on"])
        medians[str(concurrency)] = {
            "off": off,
            "on": on,
            "p50_diff_ms": round(on["p50_ms"] - off["p50_ms"], 2),
            "p99_diff_ms": round(on["p99_ms"] - off["p99_ms"], 2),
            "runs": len(at["on"]),
        }
    result = {
        **result_header("shadow_latency"),
        "model": MODEL,
        "traffic": TRAFFIC,
        "duration_s": args.duration_s,
        "rounds": len(windows) // 2,
        "points": points,
        "medians": medians,
        "prediction_log": prediction_log,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    out = write_result(result)

    print("| run | concurrency | req/s off | req/s on | p50 ms off | p50 ms on | Δp50 ms | p99 ms off | p99 ms on |")
    print("|---|---|---|---|---|---|---|---|---|")
    for round_index in range(1, result["rounds"] + 1):
        for concurrency in args.concurrency:
            off, on = (
                next(p for p in points if (p["traffic"], p["round"], p["concurrency"]) == (m, round_index, concurrency))
                for m in ("off", "on")
            )
            diff = on["p50_ms"] - off["p50_ms"]
            row = (round_index, concurrency, off["requests_per_s"], on["requests_per_s"], off["p50_ms"], on["p50_ms"])
            print("| {} | {} | {} | {} | {} | {} |".format(*row), f"{diff:+.2f} | {off['p99_ms']} | {on['p99_ms']} |")
    for concurrency, m in medians.items():
        row = (concurrency, m["off"]["requests_per_s"], m["on"]["requests_per_s"], m["off"]["p50_ms"])
        print(
            "| **median of {}** |".format(m["runs"]),
            "{} | {} | {} | {} |".format(*row),
            f"{m['on']['p50_ms']} | **{m['p50_diff_ms']:+.2f}** | {m['off']['p99_ms']} | {m['on']['p99_ms']} |",
        )
    print("\n| run | traffic | production rows | shadow rows | shadows answered | shadow / production |")
    print("|---|---|---|---|---|---|")
    for w in prediction_log:
        ratio = w["shadow_rows"] / w["production_rows"] if w["production_rows"] else float("nan")
        print(
            f"| {w['round']} | {w['traffic']} | {w['production_rows']:,} | {w['shadow_rows']:,} |",
            f"{w['shadow_ok']:,} | {ratio:.3f} |",
        )
    if "1" in medians:
        diff = medians["1"]["p50_diff_ms"]
        verdict = "met" if abs(diff) <= 1.0 else "missed"
        print(f"\nconcurrency 1: shadow on adds {diff:+.2f} ms at p50 (target: within 1 ms): {verdict}")
    print(f"elapsed {result['elapsed_s']} s; written to {out}")


if __name__ == "__main__":
    main()
