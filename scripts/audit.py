"""Known vulnerabilities in the locked dependencies (requirements.lock), through pip-audit.

A finding fails the run unless security/accepted-vulnerabilities.txt records it with a reason
("<id> <package> <reason>" per line). Where the vulnerability service cannot be reached, nothing
could be audited: that is said loudly, and fails only with --require-service.

    python scripts/audit.py [--lock requirements.lock] [--require-service]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
ACCEPTED = ROOT / "security" / "accepted-vulnerabilities.txt"


def accepted() -> dict[str, str]:
    """Vulnerability id -> the reason it is accepted for now."""
    reasons = {}
    for line in ACCEPTED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            vulnerability, _package, reason = line.split(maxsplit=2)
            reasons[vulnerability] = reason
    return reasons


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", default=str(ROOT / "requirements.lock"))
    parser.add_argument("--require-service", action="store_true", help="fail when nothing could be audited")
    options = parser.parse_args()
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "-r",
        options.lock,
        "--no-deps",
        "--disable-pip",
        "--format",
        "json",
        "--progress-spinner",
        "off",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit gave no report (exit {result.returncode}):\n{result.stderr}", file=sys.stderr)
        return 2
    lines, status = judge(report, accepted(), options.require_service)
    print("\n".join(lines))
    return status


def judge(report: dict, reasons: dict[str, str], require_service: bool = False) -> tuple[list[str], int]:
    """What pip-audit's JSON report says, line by line, and the exit status: 1 for any finding
    not accepted (or nothing audited, if the service is required), else 0."""
    dependencies = report["dependencies"]
    skipped = [d for d in dependencies if "skip_reason" in d]
    lines, unaccepted = [], 0
    for dependency in dependencies:
        for vulnerability in dependency.get("vulns", []):
            ids = {vulnerability["id"], *vulnerability.get("aliases", [])}
            reason = next((reasons[i] for i in sorted(ids) if i in reasons), None)
            fixed_in = ", ".join(vulnerability.get("fix_versions", [])) or "no fix yet"
            line = f"{dependency['name']} {dependency['version']}: {vulnerability['id']} (fixed in {fixed_in})"
            lines.append(f"accepted  {line}: {reason}" if reason else f"FOUND     {line}")
            unaccepted += reason is None
    audited = len(dependencies) - len(skipped)
    lines.append(f"{audited} of {len(dependencies)} locked packages audited, {unaccepted} unaccepted finding(s)")
    if skipped and not audited:
        lines.append(f"NOT AUDITED: the vulnerability service could not be reached ({skipped[0]['skip_reason']})")
        return lines, int(require_service)
    lines += [f"skipped   {d['name']}: {d['skip_reason']}" for d in skipped]
    return lines, int(unaccepted > 0)


if __name__ == "__main__":
    sys.exit(main())
