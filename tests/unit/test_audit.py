"""scripts/audit.py's verdict on pip-audit reports, and the lock it audits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).parents[2]
spec = importlib.util.spec_from_file_location("audit", ROOT / "scripts" / "audit.py")
audit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(audit)

VULNERABLE = {
    "name": "foo",
    "version": "1.0",
    "vulns": [{"id": "PYSEC-1", "aliases": ["CVE-9"], "fix_versions": ["1.1"]}],
}
CLEAN = {"name": "bar", "version": "2.0", "vulns": []}
SKIPPED = {"name": "baz", "skip_reason": "could not be audited"}


def test_a_finding_fails_unless_accepted_with_a_reason_under_any_alias():
    lines, status = audit.judge({"dependencies": [VULNERABLE, CLEAN]}, {})
    assert status == 1 and "FOUND     foo 1.0: PYSEC-1 (fixed in 1.1)" in lines
    lines, status = audit.judge({"dependencies": [VULNERABLE, CLEAN]}, {"CVE-9": "not reachable: foo is a test tool"})
    assert status == 0 and any(line.startswith("accepted  foo 1.0") and "test tool" in line for line in lines)


def test_nothing_audited_is_said_and_fails_only_when_the_service_is_required():
    lines, status = audit.judge({"dependencies": [SKIPPED]}, {})
    assert status == 0 and lines[-1].startswith("NOT AUDITED")
    assert audit.judge({"dependencies": [SKIPPED]}, {}, require_service=True)[1] == 1
    lines, status = audit.judge({"dependencies": [SKIPPED, CLEAN]}, {})
    assert status == 0 and "skipped   baz: could not be audited" in lines


def test_every_accepted_vulnerability_has_a_reason_and_the_lock_pins_every_package():
    audit.accepted()  # every line parses: an id, a package and a reason
    lines = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line and line[0] != "#"]
    assert lines and all("==" in line for line in lines)
    assert {"ray", "onnxruntime-gpu", "alibi-detect", "pip-audit"} <= {
        line.split("==")[0].lower().replace("_", "-") for line in lines
    }
