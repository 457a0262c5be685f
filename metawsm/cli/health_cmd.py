"""``metawsm health``: the daemon's health summary (status, worker lag, outbox, Redis)."""

from __future__ import annotations

from metawsm.cli.client import DaemonClient, json_option, print_json, reports_errors, server_option
from metawsm.cli.main import cli


@cli.command("health")
@server_option
@json_option
@reports_errors
def health(server: str, as_json: bool) -> None:
    """Print the daemon's health: status, worker lag, outbox counts and Redis.

    Exits 0 when the status is `ok`, 1 when it is `recovering`, `degraded` or `failed` (or the
    daemon cannot be reached), so it can gate scripts: `metawsm health >/dev/null && ...`.
    """
    # 503 carries the same body with status "failed": show it rather than a bare error.
    response = DaemonClient(server).get("/api/v1/health", ok=(200, 503))
    if as_json:
        print_json(response)
    else:
        from metawsm.cli.output import Printer, print_health

        print_health(Printer(), response.data or {})
    status = (response.data or {}).get("status")
    raise SystemExit(0 if status == "ok" else 1)
