"""``metawsm serve``: the daemon."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from metawsm.cli.main import cli
from metawsm.defaults import DEFAULT_DB_PATH, DEFAULT_POLICY_PATH

EMPTY_URL_RULE = "forum.redis.url cannot be empty"
# METAWSM_EVENT_LOOP=uvloop runs the API's event loop on uvloop when it is installed (it is not a
# dependency: docs/performance.md has what it changes); anything else, or uvloop missing, asyncio's.
EVENT_LOOP_ENV = "METAWSM_EVENT_LOOP"


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


def _loop_factory() -> Any:
    """The event loop factory for serve: uvloop's when asked for and installed, else None (asyncio)."""
    if os.environ.get(EVENT_LOOP_ENV, "").strip().lower() != "uvloop":
        return None
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # optional: not a dependency, may be absent
    except ImportError:
        logging.getLogger("metawsm.serve").warning("%s=uvloop but uvloop is not installed; using asyncio",
                                                   EVENT_LOOP_ENV)
        return None
    logging.getLogger("metawsm.serve").info("event loop: uvloop %s", getattr(uvloop, "__version__", "?"))
    return uvloop.new_event_loop


def _operator_token(db_path: str) -> tuple[str, Path | None]:
    """``METAWSM_TOKEN`` when set (no file), else the token file next to the database (created
    on first start)."""
    from metawsm.auth.token_file import TOKEN_ENV, load_or_create, token_file_for

    given = os.environ.get(TOKEN_ENV, "").strip()
    if given:
        return given, None
    path = token_file_for(db_path)
    token, created = load_or_create(path)
    if created:
        logging.getLogger("metawsm.serve").info("created the operator token file %s (mode 600)", path)
    return token, path


def _announce_login(url: str, token: str, no_auth: bool) -> None:
    """The UI's login link: the one place a token is ever printed (once, at start)."""
    if no_auth:
        click.echo(f"web UI: {url}/ (no token needed: --no-auth)")
    else:
        click.echo(f"web UI login link (keep it private; `metawsm ui` prints it again): {url}/?token={token}")
    sys.stdout.flush()


@cli.command("serve")
@click.option("--addr", default="127.0.0.1:3001", show_default=True, help="HOST:PORT to listen on (:PORT = loopback).")
@click.option("--db", "db_path", default=DEFAULT_DB_PATH, show_default=True, help="SQLite database file.")
@click.option("--policy", "policy_path", default=DEFAULT_POLICY_PATH, show_default=True,
              help="Policy file (built-in defaults when absent).")
@click.option("--redis-url", default=None, metavar="URL",
              help="Redis to use (overrides METAWSM_REDIS_URL and forum.redis.url); it must answer.")
@click.option("--no-auth", is_flag=True,
              help="Accept requests without a token (loopback addresses only; Host/Origin checks stay on).")
@click.option("--debug", is_flag=True, help="Enable fault injection and verbose actor logs.")
def serve(addr: str, db_path: str, policy_path: str, redis_url: str | None, no_auth: bool, debug: bool) -> None:
    """Run the daemon: the actor system, the HTTP API and the WebSocket stream.

    Stop it with Ctrl-C (SIGINT) or SIGTERM.
    """
    from metawsm.daemon_lock import DatabaseInUse, DatabaseLock, DatabaseLockError, refuse_if_in_use

    try:
        refuse_if_in_use(db_path)  # before the slow imports below: a second serve is told at once
    except DatabaseInUse as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    import asyncio

    from metawsm.api.server import Address, StartupFailed, serve_forever
    from metawsm.auth.token_file import TokenFileError
    from metawsm.daemon import Daemon, StartupError, redis_setting
    from metawsm.policy import PolicyError, read_policy_file

    _configure_logging(debug)
    try:
        loaded = read_policy_file(policy_path)
    except PolicyError as error:
        message = str(error)
        if message == EMPTY_URL_RULE:
            # The runbook's name for this failure, then the policy rule that caught it.
            message = f"forum redis url is empty ({EMPTY_URL_RULE} in {policy_path}); set forum.redis.url"
        click.echo(f"error: {message}", err=True)
        sys.exit(2)
    policy = loaded.policy
    for warning in loaded.warnings:  # fields of the Go version that do nothing here, each once
        logging.getLogger("metawsm.policy").warning("%s", warning)
    try:
        address = Address.parse(addr)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--addr") from None
    try:
        redis = redis_setting(policy, redis_url)
    except ValueError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    if no_auth and not address.is_loopback:
        click.echo(f"error: --no-auth is only allowed on a loopback address, not {addr}", err=True)
        sys.exit(2)
    # One daemon per database, decided before SQLite, Redis, tmux or even the token file are
    # touched.  A database in use is a runtime condition, not bad usage: exit 1.  Held until
    # this process ends (the OS drops it on any death, kill -9 included).
    try:
        db_lock = DatabaseLock.acquire(db_path, address.url)
    except DatabaseLockError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    try:
        operator_token, token_path = _operator_token(db_path)
    except TokenFileError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    if not address.is_loopback:
        logging.getLogger("metawsm.serve").warning(
            "serving on %s:%d, which other machines can reach: every request needs a token; "
            "list the names clients use in api.allowed_hosts", address.host, address.port)
    daemon = Daemon(policy, db_path, debug=debug, policy_path=policy_path, server_url=address.url, redis=redis,
                    operator_token=operator_token, auth_enabled=not no_auth, db_lock=db_lock)
    try:
        daemon.start()
    except StartupError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if daemon.services is not None:
        daemon.services.policy_watch.note_startup(loaded)  # so a reload does not warn about them again
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            code = runner.run(serve_forever(daemon, address, debug or policy.debug.fault_injection,
                                            token_file=str(token_path or ""),
                                            on_listening=lambda: _announce_login(address.url, operator_token, no_auth)))
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
