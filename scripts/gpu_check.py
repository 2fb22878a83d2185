"""The GPU checks, on a machine with a CUDA GPU, in under 5 minutes (scripts/gpu_check.sh runs it).

1. The environment: GPU, driver, the CUDA version the driver supports, ONNX Runtime and the CUDA
   major it is built for, the CUDA/cuDNN libraries its CUDA provider needs, torch and its CUDA.
2. The GPU tests (tests/gpu, marked `gpu`), only where the environment can run them.
3. FP32 vs FP16 vs INT8 throughput on CUDA (benchmarks/gpu_precision.py).

Writes benchmarks/results/gpu-check-<date>.json and exits with
    0  every test passed;
    1  a test failed: an assertion about serve-app's behaviour on the GPU (a bug to fix);
    2  the environment cannot run the checks (no GPU or driver, no CUDA provider, a CUDA or cuDNN
       library missing): named in the file, nothing about serve-app was learnt.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serve_app.runtime.devices import cuda_device_count, cuda_driver_version  # noqa: E402

TESTS_TIMEOUT_S = 200
BENCHMARK_TIMEOUT_S = 60


def nvidia_smi() -> dict:
    if shutil.which("nvidia-smi") is None:
        return {"error": "nvidia-smi not found"}
    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    answer = subprocess.run(query, capture_output=True, text=True, timeout=30)
    if answer.returncode != 0:
        return {"error": answer.stderr.strip() or answer.stdout.strip()}
    gpus = [dict(zip(("name", "memory", "driver_version"), line.split(", "))) for line in answer.stdout.splitlines()]
    return {"gpus": gpus}


def environment() -> tuple[dict, list[str]]:
    """What is here, and what stops the checks from running (empty: nothing)."""
    found = {"nvidia_smi": nvidia_smi(), "cuda_devices": cuda_device_count(), "driver_cuda": cuda_driver_version()}
    blockers = [] if found["cuda_devices"] else ["the CUDA driver reports no device (no GPU, or no driver)"]
    try:
        import onnxruntime as ort

        from serve_app.runtime.onnx import build_cuda_major, cuda_problem

        found["onnxruntime"] = {
            "version": ort.__version__,
            "built_for_cuda": build_cuda_major(),
            "providers": ort.get_available_providers(),
        }
        if found["cuda_devices"] and (problem := cuda_problem()):
            blockers.append(f"ONNX Runtime: {problem}")
    except ImportError as error:
        blockers.append(f"cannot import serve-app's runtime: {error} (install with `make install CUDA=1`)")
    try:
        import torch

        found["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "usable": torch.cuda.is_available()}
    except ImportError:
        found["torch"] = None  # the PyTorch GPU test skips itself and says so
    return found, blockers


def run_tests(report_dir: Path) -> dict:
    junit = report_dir / "gpu-tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "tests/gpu", "-v", "-rs", "-p", "no:cacheprovider"]
    try:
        subprocess.run([*command, f"--junitxml={junit}"], cwd=ROOT, timeout=TESTS_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"the GPU tests ran past {TESTS_TIMEOUT_S} s"}
    if not junit.is_file():
        return {"error": "pytest wrote no report (it could not start: see its output)"}
    cases = []
    for case in ElementTree.parse(junit).iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        detail = next((child.get("message", "") for child in case if child.tag != "system-out"), "")
        cases.append({"test": case.get("name"), "outcome": outcome, "detail": detail[:500]})
    return {"cases": cases}


def run_benchmark() -> dict:
    command = [sys.executable, "benchmarks/gpu_precision.py", "--seconds", "1"]
    try:
        answer = subprocess.run(command, cwd=ROOT, timeout=BENCHMARK_TIMEOUT_S, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return {"error": f"ran past {BENCHMARK_TIMEOUT_S} s"}
    print(answer.stdout, answer.stderr, sep="\n")
    return {"returncode": answer.returncode, "output": answer.stdout[-4000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where the file goes")
    results = parser.parse_args().out.resolve()
    started = time.monotonic()
    results.mkdir(parents=True, exist_ok=True)
    found, blockers = environment()
    print(json.dumps(found, indent=1))
    report: dict = {"date": datetime.date.today().isoformat(), "environment": found, "blockers": blockers}
    if blockers:
        report["verdict"] = "environment"
        print("The checks cannot run here:", *blockers, sep="\n  ")
    else:
        report["tests"] = run_tests(results)
        report["benchmark"] = run_benchmark()
        outcomes = [case["outcome"] for case in report["tests"].get("cases", [])]
        failed = "error" in report["tests"] or any(o in ("failure", "error") for o in outcomes)
        report["verdict"] = "failed" if failed else "passed"
    report["seconds"] = round(time.monotonic() - started, 1)
    path = results / f"gpu-check-{report['date']}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{report['verdict']}: {path} ({report['seconds']} s)")
    return {"passed": 0, "failed": 1, "environment": 2}[report["verdict"]]


if __name__ == "__main__":
    sys.exit(main())
