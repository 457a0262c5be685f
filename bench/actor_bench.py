# Run:  .venv/bin/python bench/actor_bench.py [--n 2000] [--crash-n N]
"""Latency of the actor runtime: ask round trips and crash recovery.

Three measurements, N iterations each, against one supervised actor at ``root/bench``:

(a) ``system.ask`` round trip from a plain thread (Ping → "pong");
(b) ``await system.ask_async`` round trip through the asyncio bridge;
(c) crash → replacement answers: ``system.crash(path)``, then ask in a loop until a new
    incarnation answers; the time from the crash to that first answer.

Supervision is generous (max_restarts=1_000_000) so the intensity limit is never reached,
and the backoff is zero by default so (c) measures detection + restart, not the backoff
delay (pass ``--backoff-initial-ms``/``--backoff-max-ms`` to include it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from metawsm.actors import (
    ActorError,
    ActorSystem,
    ChildSpec,
    DefaultSupervision,
    ManagedActor,
    Ping,
    Supervisor,
)

PATH = "root/bench"


class BenchActor(ManagedActor):
    kind = "bench"

    def handle(self, message: Any) -> Any:
        return message


def summarize(name: str, seconds: list[float]) -> tuple[str, int, float, float, float]:
    ordered = sorted(seconds)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    return name, len(ordered), pct(50) * 1000, pct(99) * 1000, statistics.fmean(ordered) * 1000


def bench_sync(system: ActorSystem, n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        system.ask(PATH, Ping(), timeout=5)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        system.ask(PATH, Ping(), timeout=5)
        samples.append(time.perf_counter() - started)
    return samples


def bench_async(system: ActorSystem, n: int, warmup: int) -> list[float]:
    async def run() -> list[float]:
        for _ in range(warmup):
            await system.ask_async(PATH, Ping(), timeout=5)
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            await system.ask_async(PATH, Ping(), timeout=5)
            samples.append(time.perf_counter() - started)
        return samples

    return asyncio.run(run())


def bench_crash(system: ActorSystem, n: int, deadline_s: float = 10.0) -> tuple[list[float], int]:
    samples = []
    failed_asks = 0
    for _ in range(n):
        started = time.perf_counter()
        system.crash(PATH)
        while True:
            try:
                system.ask(PATH, Ping(), timeout=deadline_s)
                break
            except ActorError:  # still the dying actor, or the replacement is not bound yet
                failed_asks += 1
                if time.perf_counter() - started > deadline_s:
                    raise SystemExit(f"{PATH} did not come back within {deadline_s}s") from None
                time.sleep(0)  # give the GIL to the supervisor and the new actor
        samples.append(time.perf_counter() - started)
    return samples, failed_asks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="iterations per measurement (default 2000)")
    parser.add_argument("--crash-n", type=int, default=None, help="iterations for (c) (default: --n)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--backoff-initial-ms", type=float, default=0)
    parser.add_argument("--backoff-max-ms", type=float, default=0)
    parser.add_argument("--verbose", action="store_true", help="show the supervisor's restart log lines")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.ERROR)
    if not args.verbose:
        logging.getLogger("metawsm.supervision").setLevel(logging.ERROR)

    settings = DefaultSupervision(
        max_restarts=1_000_000,
        within_seconds=60,
        backoff_initial_ms=args.backoff_initial_ms,
        backoff_max_ms=args.backoff_max_ms,
    )
    system = ActorSystem(supervision=settings)
    system.start(ChildSpec.of(Supervisor, id="root", children=[ChildSpec.of(BenchActor, id="bench")]))
    try:
        rows = [
            summarize("(a) sync ask round trip", bench_sync(system, args.n, args.warmup)),
            summarize("(b) ask_async round trip", bench_async(system, args.n, args.warmup)),
        ]
        crash_samples, failed_asks = bench_crash(system, args.crash_n or args.n)
        rows.append(summarize("(c) crash -> replacement answers", crash_samples))
        restarts = system.inspect().find(PATH).restarts
        failed = system.failed.is_set()
    finally:
        system.stop()

    print(
        f"python {sys.version.split()[0]}, supervision max_restarts={settings.max_restarts} "
        f"within={settings.within_seconds:g}s backoff={settings.backoff_initial_ms:g}->{settings.backoff_max_ms:g} ms"
    )
    print(f"{'measurement':<34} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}")
    for name, count, p50, p99, mean in rows:
        print(f"{name:<34} {count:>6} {p50:>9.3f} {p99:>9.3f} {mean:>9.3f}")
    print(f"restarts of {PATH}: {restarts}; asks refused while restarting: {failed_asks}; system failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
