"""The pictures in docs/stories/: the demo ranker's status page and shadow report, taken with
headless Chromium from a running server while `serve-app simulate` plays the shadow and challenger
stories against it.

    SERVE_APP_ADMIN_TOKEN=<token> make run        # in another shell, from a checkout
    SERVE_APP_ADMIN_TOKEN=<token> .venv/bin/python scripts/story_pictures.py

It plays the stories on that server for real (its experiment changes): run it on a demo server.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--hide-scrollbars",
]


def serve_app(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "serve_app.cli", *args], check=True)


def screenshot(chromium: str, url: str, out: Path, height: int, wait_ms: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size=1400,{height}",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={out}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
    print(f"wrote {out.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--storage", default=str(ROOT / "serve_app_storage"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "stories" / "img"))
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("story_pictures: Chromium is not installed (Debian: apt-get install chromium)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    status = f"{args.url}/dashboard?model=ranker&refresh_s=2"
    story = ["--url", args.url, "--storage", args.storage, "--seed", "5"]

    serve_app("simulate", "--scenario", "shadow", "--requests", "300", *story)
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "shadow_report.html"
        serve_app("shadow-report", "--storage", args.storage, "--model", "ranker", "--out", str(report))
        screenshot(chromium, report.as_uri(), out / "shadow-report.png", 760, 2000)
    screenshot(chromium, status, out / "status-shadow.png", 1100, 12000)

    serve_app("simulate", "--scenario", "challenger", "--requests", "1500", *story)
    screenshot(chromium, status, out / "status-challenger.png", 1100, 12000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
