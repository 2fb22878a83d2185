"""A retraining hook for drift alerts: the pattern to copy.

Set it as the drift alert's command of the model (args `drift.<model>.alert`):

    alert:
      command: [/path/to/venv/bin/python, /path/to/examples/retrain_on_drift.py]
      pass_env: [SERVE_APP_ADMIN_TOKEN, SERVE_APP_URL, SERVE_APP_STORAGE, SERVE_APP_REPOSITORY]

The alert arrives as JSON on stdin. The hook answers at once and does the work in a process of its
own, so the alert's timeout bounds only the hand-off, and a redeploy of the application (which
restarts the monitor that ran the hook) cannot cut the job short. The job:

1. builds the training set of served rows and feedback with `serve-app dataset`: since the drift
   began (the close of the alert's first drifting window), so the next version learns the population
   as it is now and its drift reference is that population; RETRAIN_SINCE (90d, 12h, or an ISO
   time) takes a fixed window instead;
2. trains the next version (here the demo ranker's trainer, serve_app.ranking.train.train_next:
   put your own here);
3. registers it with `serve-app register` (it becomes the model's next version in the repository);
4. starts it as a challenger (RETRAIN_AS=challenger, the default, at RETRAIN_WEIGHT, default 0.5)
   or a shadow (RETRAIN_AS=shadow) of the current champion through the management API
   (PUT /v2/models/<model>/experiment/traffic, the token from SERVE_APP_ADMIN_TOKEN).

Each step's outcome is appended as one JSON line to RETRAIN_LOG (default retrain.log.jsonl in the
storage folder, or the working directory for a remote store).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd


def setting(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"retrain: {name} is not set")
    return value


def log(event: dict) -> None:
    storage = setting("SERVE_APP_STORAGE", "serve_app_storage")
    default = Path(storage) / "retrain.log.jsonl" if "://" not in storage else Path("retrain.log.jsonl")
    with open(os.environ.get("RETRAIN_LOG", default), "a") as out:
        out.write(json.dumps({"time": time.time(), **event}) + "\n")


def serve_app(*args: str) -> str:
    """Run a serve-app command as a person would; its output, or the job stops naming it."""
    done = subprocess.run([sys.executable, "-m", "serve_app.cli", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"serve-app {args[0]} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def call(method: str, path: str, body: dict | None = None, retry_s: float = 90.0) -> dict:
    """A management call. A 409 that says to retry (another change in flight, or a router built
    before the last change) is sent again until retry_s; any other refusal stops the job, naming it."""
    url = setting("SERVE_APP_URL", "http://127.0.0.1:8000") + path
    headers = {"Authorization": f"Bearer {setting('SERVE_APP_ADMIN_TOKEN')}", "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    deadline = time.monotonic() + retry_s
    while True:
        request = urllib.request.Request(url, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=120) as answer:
                return json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as error:
            reason = error.read().decode(errors="replace")
            if error.code != 409 or "retry" not in reason or time.monotonic() > deadline:
                raise RuntimeError(f"{method} {path}: HTTP {error.code}: {reason}") from None
        time.sleep(1.0)


def retrain(alert: dict) -> None:
    model = alert["model"]
    storage, repository = setting("SERVE_APP_STORAGE", "serve_app_storage"), setting("SERVE_APP_REPOSITORY")
    log({"step": "alert", "model": model, "message": alert.get("message"), "since": alert["evidence"][0]["time"]})
    with tempfile.TemporaryDirectory() as folder:
        data_file = Path(folder) / "data.parquet"
        since = os.environ.get("RETRAIN_SINCE") or alert["evidence"][0]["time"]
        serve_app("dataset", "--model", model, "--storage", storage, "--since", since, "--out", str(data_file))
        from serve_app.ranking.train import train_next  # your trainer here

        trained = train_next(pd.read_parquet(data_file), Path(folder) / "next")
        log({"step": "trained", "model": model, **trained})
        files = Path(folder) / "next"
        artefacts = ["--onnx", str(files / "model.onnx"), "--preprocessor", str(files / "preprocessor.json")]
        artefacts += ["--reference", str(files / "reference.parquet")]
        registered = json.loads(serve_app("register", "--repository", repository, "--model", model, *artefacts))
    version = registered["version"]
    log({"step": "registered", "model": model, "version": version})
    champion = call("GET", f"/v2/models/{model}/experiment")["traffic"]["champion"]["version"]
    if setting("RETRAIN_AS", "challenger") == "shadow":
        traffic = {"champion": champion, "shadows": [version], "shadow_fraction": 1.0}
    else:
        traffic = {
            "champion": champion,
            "challenger": version,
            "challenger_weight": float(setting("RETRAIN_WEIGHT", "0.5")),
        }
    answer = call("PUT", f"/v2/models/{model}/experiment/traffic", traffic)
    log({"step": "started", "model": model, "version": version, "traffic": traffic, "answer": answer.get("state")})


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--job":
        saved = Path(sys.argv[2])
        alert = json.loads(saved.read_text())
        saved.unlink()
        try:
            retrain(alert)
        except Exception as error:  # the job's failure is recorded where ops look, not lost
            log({"step": "failed", "model": alert.get("model"), "error": f"{type(error).__name__}: {error}"})
            return 1
        return 0
    alert = json.load(sys.stdin)
    if alert.get("event") != "drift":
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as saved:
        json.dump(alert, saved)
    # Its own session: the job outlives the monitor that ran this hook.
    subprocess.Popen(
        [sys.executable, __file__, "--job", saved.name],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
