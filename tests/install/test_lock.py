"""requirements.lock works for a user: as a constraints file for pip, on the public index alone (pip
--isolated: no config file, no PIP_* variable, so none of this machine's local wheels and indexes), for
every supported Python on Linux x86_64, resolving the project and all its extras to exactly its pins.

pip's --python-version sets the tags and Requires-Python it resolves for, but pip evaluates environment
markers (the lock's, and those in its packages' dependencies) for the Python that runs it. So pip runs
here with its marker environment set to the target Python's, as pip running on that Python would have it.

SERVE_APP_LOCK=<file> checks another lock (for example the one in git: `git show HEAD:requirements.lock`).
Needs the package index; fails, saying so, where it cannot be reached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.install  # make check-install (CI): 1-2 minutes of pip, kept out of make test
ROOT = Path(__file__).parents[2]
LOCK = Path(os.environ.get("SERVE_APP_LOCK", ROOT / "requirements.lock"))
PYTHONS = ["3.10", "3.11", "3.12"]
# Every manylinux tag a current x86_64 Linux accepts (glibc 2.5 to 2.39), with the legacy aliases.
PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(5, 40)),
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    "linux_x86_64",
]

# pip, evaluating markers in the environment argv[1] (JSON) sets; argv[2:] are pip's arguments.
PIP_WITH_MARKERS = """
import json, sys
from pip._vendor.packaging import markers
from pip._internal.cli.main import main

environment = dict(markers.default_environment(), **json.loads(sys.argv[1]))
markers.default_environment = lambda: dict(environment)
sys.exit(main(sys.argv[2:]))
"""


def marker_environment(python: str) -> dict[str, str]:
    """What environment markers see on CPython `python` (X.Y) on Linux x86_64."""
    full = f"{python}.0"
    return {
        "python_version": python,
        "python_full_version": full,
        "implementation_version": full,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
    }


def lock_lines() -> list[str]:
    return [line.strip() for line in LOCK.read_text().splitlines() if line.strip() and not line.startswith("#")]


def pins(python: str) -> dict[str, str]:
    """Package -> the version the lock pins for CPython `python` on Linux x86_64."""
    pinned = {}
    for line in lock_lines():
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(marker_environment(python)):
            name = canonicalize_name(requirement.name)
            assert name not in pinned, f"{LOCK.name} pins {name} twice for Python {python}"
            pinned[name] = str(requirement.specifier).removeprefix("==")
    return pinned


def project_requirements() -> list[str]:
    """The project's own requirements, with every extra's (the project itself is no wheel to resolve)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]


def test_the_lock_pins_every_package_exactly_with_no_local_version_label():
    for line in lock_lines():
        requirement = Requirement(line)
        assert len(requirement.specifier) == 1 and str(requirement.specifier).startswith("=="), line
        # 2.13.0+cpu and the like: builds of a local index, which the public index does not have.
        assert "+" not in str(requirement.specifier), f"{line}: a local version label; pip cannot find it on the index"


@pytest.fixture(scope="module")
def resolutions(tmp_path_factory):
    """Python -> (pip's process, its report, its output), pip resolving for each Python at once."""
    index_check = [sys.executable, "-m", "pip", "--isolated", "index", "versions", "pip", "--retries", "1"]
    check = subprocess.run([*index_check, "--timeout", "30"], capture_output=True, text=True)
    if check.returncode != 0:
        pytest.fail(f"the package index cannot be reached, so the lock cannot be checked:\n{check.stderr[-2000:]}")
    platforms = [f"--platform={platform}" for platform in PLATFORMS]
    started = {}
    for python in PYTHONS:
        folder = tmp_path_factory.mktemp(f"python{python}")
        report, output = folder / "report.json", folder / "pip.log"
        pip = [sys.executable, "-c", PIP_WITH_MARKERS, json.dumps(marker_environment(python)), "install"]
        isolated = [
            "--isolated",
            "--no-cache-dir",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
        ]
        target = ["--python-version", python, "--only-binary=:all:", "--implementation=cp", *platforms]
        command = [*pip, *isolated, *target, "-c", str(LOCK), *project_requirements()]
        with output.open("w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        started[python] = process, report, output
    yield started
    for process, _, _ in started.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("python", PYTHONS)
def test_the_lock_resolves_from_the_public_index_to_its_pins(python, resolutions):
    process, report, output = resolutions[python]
    returncode = process.wait()
    log = output.read_text()[-5000:]
    assert returncode == 0, f"pip cannot install with the constraints of {LOCK.name} on Python {python}:\n{log}"

    pinned = pins(python)
    installs = json.loads(report.read_text())["install"]
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}
    unpinned = sorted(set(resolved) - set(pinned))
    assert not unpinned, f"{LOCK.name} has no pin for Python {python} for {unpinned}"
    differ = {name: (version, pinned[name]) for name, version in resolved.items() if version != pinned[name]}
    assert not differ, f"for Python {python} pip resolved (resolved, pinned): {differ}"
