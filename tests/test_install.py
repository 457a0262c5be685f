"""The reproducible install: the lock files satisfy pyproject.toml, a stale lock is refused in one
line, and the docs stand on their own (no reference to files outside the repository)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK_LOCK = ROOT / "scripts" / "check_lock.py"


def check_lock(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK_LOCK), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize(("lock", "extras"), [("requirements/runtime.txt", ()), ("requirements/test.txt", ("test",))])
def test_the_committed_locks_satisfy_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    args = [lock] + [arg for extra in extras for arg in ("--extra", extra)]
    result = check_lock(ROOT, *args)
    assert result.returncode == 0, result.stderr


def test_every_pin_in_the_locks_carries_a_hash() -> None:
    for lock in ("requirements/runtime.txt", "requirements/test.txt"):
        text = (ROOT / lock).read_text()
        pins = re.findall(r"^([A-Za-z0-9._-]+)==\S+ \\\n\s+--hash=sha256:", text, flags=re.M)
        assert len(pins) == len(re.findall(r"^[A-Za-z0-9._-]+==", text, flags=re.M)) > 10, lock


def test_shared_packages_have_the_same_version_in_both_locks() -> None:
    def pins(lock: str) -> dict[str, str]:
        return dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (ROOT / lock).read_text(), flags=re.M))

    runtime, test = pins("requirements/runtime.txt"), pins("requirements/test.txt")
    assert {name: test.get(name) for name in runtime} == runtime


def write_project(directory: Path, dependency: str, lock_line: str) -> None:
    (directory / "pyproject.toml").write_text(
        f'[project]\nname = "x"\nversion = "1"\ndependencies = ["{dependency}"]\n'
        '[project.optional-dependencies]\ntest = ["pytest>=8"]\n')
    (directory / "lock.txt").write_text(f"{lock_line} \\\n    --hash=sha256:00\n")


@pytest.mark.parametrize(
    ("dependency", "lock_line", "args", "message"),
    [
        ("msgspec>=0.24", "msgspec==0.23.0", (),
         "error: lock out of date: lock.txt pins msgspec==0.23.0, outside pyproject.toml's msgspec>=0.24; "
         "run `make lock` and commit requirements/"),
        ("rich>=13", "msgspec==0.23.0", (),
         "error: lock out of date: rich is in pyproject.toml but not pinned in lock.txt; "
         "run `make lock` and commit requirements/"),
        ("msgspec>=0.18", "msgspec==0.23.0", ("--extra", "test"),
         "error: lock out of date: pytest is in pyproject.toml but not pinned in lock.txt; "
         "run `make lock` and commit requirements/"),
    ],
)
def test_a_lock_that_no_longer_fits_pyproject_is_refused_in_one_line_with_exit_2(
    tmp_path: Path, dependency: str, lock_line: str, args: tuple[str, ...], message: str
) -> None:
    write_project(tmp_path, dependency, lock_line)
    result = check_lock(tmp_path, "lock.txt", *args)
    assert result.returncode == 2
    assert result.stderr == message + "\n"


def test_a_missing_lock_is_refused_with_exit_2(tmp_path: Path) -> None:
    write_project(tmp_path, "msgspec>=0.18", "msgspec==0.23.0")
    result = check_lock(tmp_path, "nope.txt")
    assert result.returncode == 2
    assert result.stderr.startswith("error: lock file nope.txt is missing; run `make lock`")


# -- the docs stand alone ----------------------------------------------------------------------------

DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
OUTSIDE = re.compile(r"(?<![\w/.])(?:spec/\w+\.md|\.\./[\w./-]+|/work/[\w./-]+)")


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: path.name)
def test_docs_never_point_outside_the_repository(doc: Path) -> None:
    assert OUTSIDE.findall(doc.read_text()) == []


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda path: path.name)
def test_links_between_docs_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", doc.read_text()):
        assert (doc.parent / target).is_file(), f"{doc.name} links to missing {target}"
