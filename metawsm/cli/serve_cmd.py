"""``metawsm serve``: the daemon."""

from __future__ import annotations

import logging
import sys

import click

from metawsm.cli.main import cli
from metawsm.defaults import DEFAULT_DB_PATH, DEFAULT_POLICY_PATH

EMPTY_URL_RULE = "forum.redis.url cannot be empty"


def _configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    # Pykka logs every actor failure with a traceback; the supervisors already log one line.
    logging.getLogger("pykka").setLevel(logging.WARNING if debug else logging.CRITICAL)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequestFilter())


class _MalformedRequestFilter(logging.Filter):
    """aiohttp logs a malformed request (bad header bytes, bad request line) at ERROR with a
    traceback, although it is the client's fault and it already answered 400: one line is
    enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "rejected a malformed HTTP request: %s", (" ".join(str(error.message).split()),)
            record.exc_info = record.exc_text = None
        return True


@cli.command("serve")
@click.option("--addr", default="127.0.0.1:3001", show_default=True, help="HOST:PORT to listen on (:PORT = loopback).")
@click.option("--db", "db_path", default=DEFAULT_DB_PATH, show_default=True, help="SQLite database file.")
@click.option("--policy", "policy_path", default=DEFAULT_POLICY_PATH, show_default=True,
              help="Policy file (built-in defaults when absent).")
@click.option("--redis-url", default=None, metavar="URL",
              help="Redis to use (overrides METAWSM_REDIS_URL and forum.redis.url); it must answer.")
@click.option("--debug", is_flag=True, help="Enable fault injection and verbose actor logs.")
def serve(addr: str, db_path: str, policy_path: str, redis_url: str | None, debug: bool) -> None:
    """Run the daemon: the actor system, the HTTP API and the WebSocket stream.

    Stop it with Ctrl-C (SIGINT) or SIGTERM.
    """
    import asyncio

    from metawsm.api.server import Address, StartupFailed, serve_forever
    from metawsm.daemon import Daemon, StartupError, redis_setting
    from metawsm.policy import PolicyError, load_policy

    _configure_logging(debug)
    try:
        policy = load_policy(policy_path)
    except PolicyError as error:
        message = str(error)
        if message == EMPTY_URL_RULE:
            # The runbook's name for this failure, then the policy rule that caught it.
            message = f"forum redis url is empty ({EMPTY_URL_RULE} in {policy_path}); set forum.redis.url"
        click.echo(f"error: {message}", err=True)
        sys.exit(2)
    try:
        address = Address.parse(addr)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--addr") from None
    try:
        redis = redis_setting(policy, redis_url)
    except ValueError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    daemon = Daemon(policy, db_path, debug=debug, policy_path=policy_path, server_url=address.url, redis=redis)
    try:
        daemon.start()
    except StartupError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    try:
        code = asyncio.run(serve_forever(daemon, address, debug or policy.debug.fault_injection))
    except StartupFailed as error:
        daemon.stop()
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        daemon.stop()
        code = 0
    except BaseException:
        # A bug in the serve loop: stop the actor threads, or they keep the process alive.
        logging.getLogger("metawsm.serve").exception("serve failed; stopping the actor system")
        daemon.stop()
        sys.exit(1)
    sys.exit(code)
