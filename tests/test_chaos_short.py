"""The chaos script, short: 5 random ``kill -9`` of ``metawsm serve`` over 500 writes from 8
HTTP clients, plus Redis stopped and restarted empty, then every invariant of targets.md.

The scenario and the checks live in ``bench/chaos.py`` (``run_chaos``); the full run
(``bench/chaos.py`` with its defaults: 50 kills, 10,000 writes) is documented in
``docs/performance.md``.  This test only asserts that the short run finds no violation.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from support.processes import require_executable

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_chaos() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # chaos.py imports its sibling _harness
    spec = importlib.util.spec_from_file_location("bench_chaos", BENCH / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(180)
def test_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    require_executable("redis-server")
    chaos = load_chaos()
    outcome = chaos.run_chaos(tmp_path, kills=5, writes=500, clients=8, ws=2, redis_phase=True, redis_down=1.5)
    report = "\n".join(["did:", *outcome.did, "found:", *outcome.found, "violations:", *outcome.violations])
    assert outcome.ok, report
    assert len(outcome.did) >= 3, report  # the kills, the Redis phase and the answers were all reported
