"""Check that a lock file still satisfies pyproject.toml before anything is installed from it.

Usage: ``python scripts/check_lock.py requirements/runtime.txt [--extra test]``

The Makefile installs exactly what the lock pins (``pip --require-hashes``), so a dependency
added to or narrowed in ``pyproject.toml`` without re-locking would otherwise surface later as
an import error or a mysterious test failure. This prints one line naming the package and the
fix, and exits 2 (bad input, as everywhere in metawsm).

It runs with the virtualenv's bare interpreter, before the lock is installed, so it needs
nothing but the standard library and the ``packaging`` copy that every pip carries.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a fresh venv: only pip's vendored copy is there
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]  # pip's vendored copy when packaging is absent
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]  # pip's vendored copy when packaging is absent

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s\\;]+)")
FIX = "run `make lock` and commit requirements/"


def pinned(lock: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match["name"])] = match["version"]
    return pins


def wanted(pyproject: Path, extras: list[str]) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"error: pyproject.toml has no extra [{extra}]")
        specs += optional[extra]
    return [Requirement(spec) for spec in specs]


def problems(lock: Path, pyproject: Path, extras: list[str]) -> list[str]:
    pins = pinned(lock)
    found: list[str] = []
    for requirement in wanted(pyproject, extras):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        version = pins.get(name)
        if version is None:
            found.append(f"{requirement.name} is in pyproject.toml but not pinned in {lock}")
        elif not requirement.specifier.contains(version, prereleases=True):
            found.append(f"{lock} pins {requirement.name}=={version}, outside pyproject.toml's "
                         f"{requirement.name}{requirement.specifier}")
    return found


def main(argv: list[str]) -> int:
    args = list(argv)
    extras: list[str] = []
    while "--extra" in args:
        at = args.index("--extra")
        extras.append(args[at + 1])
        del args[at:at + 2]
    if len(args) != 1:
        print("usage: check_lock.py LOCKFILE [--extra NAME]...", file=sys.stderr)
        return 2
    lock = Path(args[0])
    if not lock.is_file():
        print(f"error: lock file {lock} is missing; {FIX}", file=sys.stderr)
        return 2
    found = problems(lock, Path("pyproject.toml"), extras)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        print(f"error: lock out of date: {found[0]}{more}; {FIX}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
