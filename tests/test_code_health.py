"""Lint suppressions explain themselves: every `# noqa` and `# type: ignore` says why on its line.

ruff and mypy themselves run in `make test` before pytest (see the Makefile's `lint` target); this
test adds the one rule neither tool has.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("metawsm", "tests", "scripts", "bench")
SUPPRESSION = re.compile(r"#\s*(noqa|type:\s*ignore)\b")
# A noqa with codes, then ` - reason`; a type-ignore with codes, then `  # reason` (or ` - reason`).
EXPLAINED = re.compile(r"#\s*noqa:\s*[A-Z0-9, ]+\s+-\s+\S.{2,}|#\s*type:\s*ignore\[[a-z, -]+\]\s+(#|-)\s*\S.{2,}")


def suppressions() -> list[tuple[str, int, str]]:
    found = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue  # its own patterns and docstring name the markers
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if SUPPRESSION.search(line):
                    found.append((str(path.relative_to(ROOT)), number, line.strip()))
    return found


def test_the_scan_finds_suppressions() -> None:
    assert len(suppressions()) > 10


def test_every_suppression_names_its_codes_and_gives_a_reason() -> None:
    unexplained = [f"{path}:{number}: {line}" for path, number, line in suppressions() if not EXPLAINED.search(line)]
    assert not unexplained, "add the codes and a reason on the line:\n" + "\n".join(unexplained)
