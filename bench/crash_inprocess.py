# Run:  .venv/bin/python bench/crash_inprocess.py [--n 30]
"""Actor crash -> replacement answers, per forum actor, measured inside the daemon's process.

``bench/crash.py`` measures the same through the HTTP fault-injection route, so its figures
also hold HTTP round trips and the polls of ``/api/v1/debug/actors``.  This script starts the
real actor system (``metawsm.daemon.Daemon``, the one ``metawsm serve`` runs) on a private
``redis-server`` and a scratch database, and per actor ``--n`` times: ``system.crash(path)``,
then asks the path a ``Ping`` until an answer comes back (an ask to a restarting actor fails
fast; the probe then waits 0.2 ms, so it does not take the interpreter from the restart it is
timing).  Supervision: ``within_seconds`` 0.1 and crashes ``--pause`` apart, so each crash
measures the immediate restart, not the deliberate backoff.  Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import LATENCY_HEADERS, Scratch, latency_row, machine_facts, policy, start_redis, table
from metawsm.actors.errors import ActorError
from metawsm.actors.messages import Ping
from metawsm.daemon import Daemon
from metawsm.policy import policy_from_mapping
from metawsm.waiting import wait_until

ACTORS = {
    "broker (stateless leaf)": "root/forum/broker",
    "handler": "root/forum/handler",
    "relay (stateless)": "root/forum/relay",
    "intake (stateless; rest_for_one restarts all after it)": "root/forum/intake",
    "projection thread_views": "root/forum/projections/thread_views",
    "projection control_state": "root/forum/projections/control_state",
}
PROBE_PAUSE_SECONDS = 0.0002


def replacement_seconds(daemon_system: object, path: str) -> float:
    system = daemon_system
    started = time.perf_counter()
    system.crash(path, "bench")  # type: ignore[attr-defined]  # the daemon's system, typed loosely
    while True:
        try:
            system.ask(path, Ping(), timeout=2.0)  # type: ignore[attr-defined]  # the daemon's system, typed loosely
            return time.perf_counter() - started
        except ActorError:
            time.sleep(PROBE_PAUSE_SECONDS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30, help="crashes per actor (default 30)")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between crashes (default 0.2)")
    args = parser.parse_args()
    with Scratch() as scratch:
        redis_server = start_redis(scratch.path)
        data = policy(redis_server.url, supervision={"max_restarts": 5, "within_seconds": 0.1})
        daemon = Daemon(policy_from_mapping(data), scratch.path / "metawsm.db", base_dir=scratch.path)
        try:
            system = daemon.start()
            wait_until(lambda: system.inspect().state == "running", timeout=20)
            print(machine_facts(redis_server))
            rows = []
            for name, path in ACTORS.items():
                samples = []
                for _ in range(args.n):
                    samples.append(replacement_seconds(system, path))
                    time.sleep(args.pause)  # a quiet period, so the next restart is immediate
                rows.append(latency_row(name, samples))
            print()
            print(table(LATENCY_HEADERS, rows, title="crash -> replacement answers a Ping (in process)"))
            print(f"system failed: {system.failed.is_set()}")
        finally:
            daemon.stop()
            redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
