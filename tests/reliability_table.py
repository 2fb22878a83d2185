"""The table of what the reliability tests tried and what held (docs/reliability.md), written by the tests.

A test asks for the `reliability` fixture, says what it tries, and adds what it measured:

    def test_...(reliability):
        row = reliability("Faults", "a model replica killed under load")
        row.measured["client errors"] = "0 of 1,234"

Whether the test passed fills the "held" column. At the end of the session the table of the tests
that ran goes to test-output/reliability.md (git-ignored): a plain test run leaves the checkout as it
was. `make reliability-report` (and `make soak`) set SERVE_APP_WRITE_RELIABILITY_TABLE=1, and then the
rows also replace their rows in docs/reliability.md (matched by area and what was tried); other rows stay.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TABLE_PAGE = Path(__file__).parents[1] / "docs" / "reliability.md"
REPORT = Path(__file__).parents[1] / "test-output" / "reliability.md"
BEGIN = "<!-- reliability-table: written by the tests (tests/reliability_table.py) -->"
END = "<!-- reliability-table: end -->"
HEADER = ["| Area | What was tried | Held | Measured |", "|---|---|---|---|"]
AREAS = ["Load", "Faults", "Bad input", "Security"]
_rows: dict[str, Row] = {}


@dataclass
class Row:
    area: str
    tried: str
    measured: dict[str, str] = field(default_factory=dict)
    held: str = "not finished"

    @property
    def key(self) -> str:
        return f"| {self.area} | {self.tried} |"

    def line(self) -> str:
        measured = "; ".join(f"{name}: {value}" for name, value in self.measured.items())
        return f"{self.key} {self.held} | {measured} |"


@pytest.fixture
def reliability(request):
    def start(area: str, tried: str) -> Row:
        row = Row(area, tried)
        request.node.stash.setdefault(_ROWS, []).append(row)
        _rows[row.key] = row
        return row

    return start


_ROWS = pytest.StashKey[list]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    rows = item.stash.get(_ROWS, [])
    if rows and (report.when == "call" or report.failed):
        for row in rows:
            if report.passed:
                row.held = "yes"
            elif report.skipped:
                row.held = "skipped"
            else:
                error = call.excinfo.value if call.excinfo else None
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
                row.held = f"**no**: {reason.replace('|', '/')}"
    return report


def pytest_sessionfinish(session):
    if not _rows:
        return
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(merged(f"{BEGIN}\n{END}\n", list(_rows.values())))
    if os.environ.get("SERVE_APP_WRITE_RELIABILITY_TABLE") == "1" and TABLE_PAGE.exists():
        TABLE_PAGE.write_text(merged(TABLE_PAGE.read_text(), list(_rows.values())))


def merged(page: str, rows: list[Row]) -> str:
    """The page with these rows in its table: each replaces the row with its key, or is appended."""
    if BEGIN not in page or END not in page:
        return page
    head, rest = page.split(BEGIN, 1)
    table, tail = rest.split(END, 1)
    lines = [line for line in table.strip().splitlines() if line.startswith("| ") and line not in HEADER]
    for row in rows:
        index = next((i for i, line in enumerate(lines) if line.startswith(row.key)), None)
        if index is None:
            lines.append(row.line())
        else:
            lines[index] = row.line()
    lines.sort(key=lambda line: AREAS.index(area) if (area := line.split("|")[1].strip()) in AREAS else len(AREAS))
    return head + BEGIN + "\n" + "\n".join(HEADER + lines) + "\n" + END + tail
