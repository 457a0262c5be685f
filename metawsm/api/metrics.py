"""Prometheus text exposition (format 0.0.4) for the handful of figures an operator graphs.

Hand-written: eight metrics do not justify a client library, and the format is small.
Everything here runs on the event loop thread, so plain attributes need no locks.
"""

from __future__ import annotations

import bisect
from typing import Any

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1


class Metrics:
    def __init__(self) -> None:
        self.writes: dict[str, int] = {}
        self.write_latency = Histogram()
        self.outbox_pending = 0
        self.projection_lag: dict[str, int] = {}
        self.http_errors: dict[int, int] = {}

    def observe_write(self, status: str, seconds: float) -> None:
        self.writes[status] = self.writes.get(status, 0) + 1
        if status == "applied":
            self.write_latency.observe(seconds)

    def observe_error(self, status: int) -> None:
        self.http_errors[status] = self.http_errors.get(status, 0) + 1

    def set_health_gauges(self, outbox_pending: int, projection_lag: dict[str, int]) -> None:
        self.outbox_pending = outbox_pending
        self.projection_lag = dict(projection_lag)

    def render(self, ctx: Any) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        metric("metawsm_forum_writes_total", "counter", "Forum writes by result (applied=200, accepted=202).")
        for status in ("applied", "accepted"):
            lines.append(f'metawsm_forum_writes_total{{result="{status}"}} {self.writes.get(status, 0)}')

        metric("metawsm_forum_write_seconds", "histogram", "Forum write latency until the thread view reflects it.")
        cumulative = 0
        for bound, count in zip(self.write_latency.buckets, self.write_latency.counts):
            cumulative += count
            lines.append(f'metawsm_forum_write_seconds_bucket{{le="{bound:g}"}} {cumulative}')
        lines.append(f'metawsm_forum_write_seconds_bucket{{le="+Inf"}} {self.write_latency.count}')
        lines.append(f"metawsm_forum_write_seconds_sum {self.write_latency.total:.6f}")
        lines.append(f"metawsm_forum_write_seconds_count {self.write_latency.count}")

        metric("metawsm_forum_outbox_pending", "gauge", "Outbox rows not yet published to Redis.")
        lines.append(f"metawsm_forum_outbox_pending {self.outbox_pending}")

        metric("metawsm_forum_projection_lag", "gauge", "Events in the log not yet applied, per projection.")
        for name, lag in sorted(self.projection_lag.items()):
            lines.append(f'metawsm_forum_projection_lag{{projection="{name}"}} {lag}')

        bus = ctx.services.bus
        metric("metawsm_forum_bus_healthy", "gauge", "1 when Redis is reachable by the pipeline.")
        lines.append(f"metawsm_forum_bus_healthy {1 if bus.healthy else 0}")
        metric("metawsm_forum_stream_entries_processed_total", "counter", "Stream entries acknowledged.")
        lines.append(f"metawsm_forum_stream_entries_processed_total {bus.total_processed}")
        metric("metawsm_forum_parked_total", "counter", "Stream entries parked after repeated failures.")
        lines.append(f"metawsm_forum_parked_total {bus.parked_total}")

        summary = ctx.system.summary()
        metric("metawsm_actor_restarts_total", "counter", "Actor restarts performed by supervisors.")
        lines.append(f"metawsm_actor_restarts_total {summary['restarts_total']}")
        metric("metawsm_actors", "gauge", "Managed actors by state.")
        lines.append(f'metawsm_actors{{state="alive"}} {summary["alive"]}')
        lines.append(f'metawsm_actors{{state="restarting"}} {summary["restarting"]}')

        hub = ctx.hub
        metric("metawsm_websocket_clients", "gauge", "Connected WebSocket stream clients.")
        lines.append(f"metawsm_websocket_clients {hub.client_count() if hub else 0}")
        metric("metawsm_websocket_frames_total", "counter", "Frames queued to WebSocket clients.")
        lines.append(f"metawsm_websocket_frames_total {hub.frames_total if hub else 0}")
        metric("metawsm_websocket_slow_closed_total", "counter", "Clients closed with 1013 for falling behind.")
        lines.append(f"metawsm_websocket_slow_closed_total {hub.slow_closed_total if hub else 0}")

        metric("metawsm_http_errors_total", "counter", "HTTP error responses by status.")
        for code, count in sorted(self.http_errors.items()):
            lines.append(f'metawsm_http_errors_total{{status="{code}"}} {count}')
        return "\n".join(lines) + "\n"
