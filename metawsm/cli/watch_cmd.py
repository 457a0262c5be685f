"""``metawsm watch``: alerts for the runs that need a human, each once per cause.

Alerts: ``guidance_needed`` (an agent's guidance request is pending), ``run_done`` (completed or
closed), ``run_failed``, ``run_stopped`` and ``agent_unhealthy`` (an agent of a working run is stalled,
dead or failed).  Each is printed as ``[time] ALERT <event>: <message>`` plus indented hint lines,
optionally with a bell and a notify command.

**Once per cause.**  A cause is what makes the alert true: a pending question (agent, thread,
question), a status class (done, failed, stopped), an agent's health at a given restart count.  A
cause is alerted when it appears and not again while it holds; when it goes away (the question is
answered, the run is resumed) it is forgotten, so the next request or the next failure alerts
anew.  An agent's health is remembered for good: it flapping between stalled and healthy at the
same restart count alerts once.

**Wake-ups.**  The run snapshots (``GET /api/v1/runs``) are re-read whenever the forum stream
(``/api/v1/forum/stream``, filtered like the watch) sends a frame or the operator stores a decision
(the ``/api/v1/operator/decisions`` long-poll), and otherwise every ``--interval`` seconds for
what makes no event (a status change, an agent's health).  When the daemon goes away the watch
prints one ``reconnecting…`` line on stderr and goes on when it is back; what happened meanwhile
is alerted then (the snapshots are the state, not a log).

In single-run mode the watch exits 0 once the run is completed, closed, failed or stopped, after
that alert.  With ``--all`` (or ``--ticket``) it watches every active run and runs started later.

aiohttp is imported only when the watch runs (the CLI loads this module for every command).
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from metawsm.cli.client import (
    CONNECT_TIMEOUT,
    ApiFailure,
    ClientError,
    DaemonClient,
    ServerAddress,
    fail,
    path_segment,
    query_string,
    reports_errors,
    server_option,
)
from metawsm.cli.main import cli
from metawsm.cli.operator_cmd import (
    DECISIONS,
    INACTIVE_STATUSES,
    RUNS,
    check_selection,
    unhealthy_agents,
)
from metawsm.cli.stopping import until_signalled

if TYPE_CHECKING:  # imported where used: every other command loads this module at start-up
    import aiohttp

ALERTS_LINE = "Alerts: guidance needed, run done/failed/stopped, agent unhealthy."
NOTIFY_TIMEOUT = 10.0  # seconds a --notify-cmd may take per alert
REQUEST_TIMEOUT = 15.0
LONG_POLL_SECONDS = 25
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
MIN_CHECK_GAP = 0.1
DONE_STATUSES = ("completed", "closed")
# The statuses that end a single-run watch (after their alert).
FINAL_STATUSES = (*DONE_STATUSES, "failed", "stopped")


@dataclass(frozen=True)
class Alert:
    event: str
    message: str
    hints: list[str]
    run: dict[str, Any] = field(hash=False, compare=False)


class _Away(Exception):
    """The daemon could not be reached (or did not answer); try again later."""


def _run_flag(run_id: str) -> str:
    return f"--run-id {shlex.quote(run_id)}"


def _agent_reason(agent: dict[str, Any]) -> str:
    if agent.get("status") == "failed":
        return agent.get("last_error") or "agent process exited with failure"
    if agent.get("health") == "dead":
        return "agent session is not running"
    age = agent.get("last_activity_age_seconds")
    return "no recent activity" + (f" (last activity {age:.0f}s ago)" if isinstance(age, int | float) else "")


def classify(run: dict[str, Any]) -> dict[tuple[Any, ...], Alert]:
    """The alerts a run snapshot calls for, keyed by cause."""
    run_id, status = run["run_id"], run.get("status", "")
    flag = _run_flag(run_id)
    alerts: dict[tuple[Any, ...], Alert] = {}
    for item in run.get("pending_guidance", []):
        agent = item.get("agent_name", "")
        cause: tuple[Any, ...] = ("guidance", agent, item.get("thread_id", ""), item.get("question", ""))
        hints = [f"Direction needed for run {run_id}.", f"question: {item.get('question', '')}"]
        if item.get("context"):
            hints.append(f"context: {item['context']}")
        hints += [f"answer with: {item.get('answer_command', '')}", f"status: metawsm status {flag}"]
        alerts[cause] = Alert("guidance_needed", f"run {run_id}: agent {agent} needs guidance", hints, run)
    if status in DONE_STATUSES:
        alerts[("done",)] = Alert("run_done", f"run {run_id} reached {status}",
                                  [f"status: metawsm status {flag}", f"merge: metawsm merge {flag} --dry-run",
                                   f"close: metawsm close {flag}"], run)
    elif status == "failed":
        error = run.get("error") or "run entered failed state"
        alerts[("failed",)] = Alert("run_failed", f"run {run_id} failed: {error}",
                                    [f"status: metawsm status {flag}", f"resume: metawsm resume {flag}"], run)
    elif status == "stopped":
        alerts[("stopped",)] = Alert("run_stopped", f"run {run_id} stopped",
                                     [f"resume: metawsm resume {flag}"], run)
    for agent in unhealthy_agents(run):
        name = agent.get("name", "")
        health = "failed" if agent.get("status") == "failed" else agent.get("health", "")
        cause = ("agent", name, agent.get("workspace", ""), health, agent.get("restarts_used", 0))
        hints = [f"status: metawsm status {flag}",
                 f"restart: metawsm restart {flag} --agent {shlex.quote(name)}"]
        if agent.get("attach_command"):
            hints.append(f"look: {agent['attach_command']}")
        alerts[cause] = Alert("agent_unhealthy",
                              f"run {run_id}: agent {name} ({agent.get('workspace', '')}) is {health}: "
                              f"{_agent_reason(agent)}", hints, run)
    return alerts


class Watcher:
    def __init__(self, server: str, ticket: str | None, run_id: str | None, interval: float,
                 notify_argv: list[str], bell: bool) -> None:
        self.client = DaemonClient(server, read_timeout=REQUEST_TIMEOUT)
        self.address = ServerAddress.parse(server)
        self.ticket = ticket
        self.run_id = run_id
        self.interval = interval
        self.notify_argv = notify_argv
        self.bell = bell
        self.headers: dict[str, str] = {}
        self.list_ticket: str | None = ticket  # single-run mode lists the runs of its run's first ticket
        self.current: dict[str, set[tuple[Any, ...]]] = {}  # run → causes that hold now (alerted)
        self.health_seen: dict[str, set[tuple[Any, ...]]] = {}  # run → agent health causes ever alerted
        self.tracked: set[str] = set()
        self.notify_errors: set[str] = set()
        self.finished = False  # single-run mode: the run reached a final status
        self.wake: asyncio.Event | None = None

    # -- one check ----------------------------------------------------------------------------

    def first_check(self) -> list[Alert]:
        """The first look, with the blocking client: an unknown run or no daemon fails here."""
        self.headers = self.client.auth_headers()
        if self.run_id:
            run = self.client.get(f"{RUNS}/{path_segment(self.run_id)}").data["run"]
            tickets = run.get("tickets") or []
            self.list_ticket = tickets[0] if tickets else None
            return self.observe([run])
        return self.observe(self.client.get(RUNS, {"ticket": self.ticket}).data.get("runs", []))

    def observe(self, runs: list[dict[str, Any]]) -> list[Alert]:
        """The new alerts in these snapshots; remembers what holds now."""
        alerts: list[Alert] = []
        for run in sorted(runs, key=lambda r: (r.get("created_at", ""), r.get("run_id", ""))):
            run_id, status = run["run_id"], run.get("status", "")
            if self.run_id and run_id != self.run_id:
                continue
            if not self.run_id and run_id not in self.tracked and status in INACTIVE_STATUSES:
                continue  # closed or stopped before we looked (or since we stopped tracking it)
            self.tracked.add(run_id)
            found = classify(run)
            held = self.current.get(run_id, set())
            seen = self.health_seen.setdefault(run_id, set())
            for cause, alert in found.items():
                if cause in held or cause in seen:
                    continue
                alerts.append(alert)
                if cause[0] == "agent":
                    seen.add(cause)
            self.current[run_id] = set(found)  # a cause that went away may alert again when it returns
            if self.run_id and status in FINAL_STATUSES:
                self.finished = True
            if not self.run_id and status in INACTIVE_STATUSES:
                self.tracked.discard(run_id)  # alerted; a resumed run is tracked again
                self.current.pop(run_id, None)
        return alerts

    # -- printing and notifying -----------------------------------------------------------------

    async def report(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            lines = [f"[{stamp}] ALERT {alert.event}: {alert.message}", *(f"  {hint}" for hint in alert.hints)]
            sys.stdout.write(("\a" if self.bell else "") + "\n".join(lines) + "\n")
            sys.stdout.flush()
            if self.notify_argv:
                await asyncio.to_thread(self._notify, alert)

    def _notify(self, alert: Alert) -> None:
        from metawsm.operator.notify import notify_env, run_command

        run = alert.run
        env = notify_env(alert.event, alert.message, run["run_id"], run.get("status", ""), run.get("tickets", []))
        error = run_command(self.notify_argv, env, NOTIFY_TIMEOUT)
        if error is not None and error not in self.notify_errors:
            self.notify_errors.add(error)  # the same failure is reported once
            print(f"warning: notify command failed: {error}", file=sys.stderr, flush=True)

    # -- the daemon, asynchronously -----------------------------------------------------------

    def _url(self, path: str, query: dict[str, Any] | None = None) -> str:
        a = self.address
        host = f"[{a.host}]" if ":" in a.host else a.host
        return f"{a.scheme}://{host}:{a.port}{a.base_path}{path}{query_string(query)}"

    async def _get(self, session: aiohttp.ClientSession, path: str, query: dict[str, Any] | None,
                   timeout: float) -> Any:
        import aiohttp

        try:
            async with session.get(self._url(path, query), headers=self.headers,
                                   timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT)
                                   ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise _Away(str(error)) from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if status == 200:
            return data
        if status >= 500:
            raise _Away(f"HTTP {status}")
        body = data.get("error") if isinstance(data, dict) else None
        code = str(body.get("code", "")) if isinstance(body, dict) else ""
        message = str(body.get("message", "")) if isinstance(body, dict) else f"HTTP {status}"
        raise ApiFailure(status, code, message, raw)

    async def _check(self, session: aiohttp.ClientSession) -> list[Alert]:
        data = await self._get(session, RUNS, {"ticket": self.list_ticket}, REQUEST_TIMEOUT)
        runs = data.get("runs", []) if isinstance(data, dict) else []
        if self.run_id and not any(r.get("run_id") == self.run_id for r in runs):
            # Not where its ticket's listing should have it: ask for the run itself (a 404 ends the watch).
            data = await self._get(session, f"{RUNS}/{path_segment(self.run_id)}", None, REQUEST_TIMEOUT)
            runs = [data["run"]]
        return self.observe(runs)

    async def run(self) -> None:
        import aiohttp

        self.wake = asyncio.Event()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            helpers = [asyncio.create_task(self._follow_stream(session)),
                       asyncio.create_task(self._follow_decisions(session))]
            try:
                await self._loop(session)
            finally:
                for task in helpers:
                    task.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        assert self.wake is not None
        away = False
        while not self.finished:
            try:
                await asyncio.wait_for(self.wake.wait(), self.interval)
            except TimeoutError:
                pass
            self.wake.clear()
            try:
                alerts = await self._check(session)
            except _Away:
                if not away:
                    print("reconnecting…", file=sys.stderr, flush=True)
                    away = True
                continue
            away = False
            await self.report(alerts)
            # A busy forum wakes the watch on every event; one check per MIN_CHECK_GAP is enough.
            await asyncio.sleep(min(MIN_CHECK_GAP, self.interval))

    def _poke(self) -> None:
        if self.wake is not None:
            self.wake.set()

    async def _follow_stream(self, session: aiohttp.ClientSession) -> None:
        """Wake the check on every frame of the forum stream (live only; the snapshots are the state)."""
        import aiohttp

        from metawsm.cli.watch import STREAM_PATH

        url = self.address.ws_url(STREAM_PATH, {"ticket": self.ticket, "run_id": self.run_id})
        backoff = BACKOFF_FIRST
        while True:
            try:
                async with session.ws_connect(url, headers=self.headers, heartbeat=30.0, max_msg_size=0,
                                              timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0)) as ws:
                    backoff = BACKOFF_FIRST
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        if '"heartbeat"' not in message.data[:40]:
                            self._poke()
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _follow_decisions(self, session: aiohttp.ClientSession) -> None:
        """Wake the check when the operator stores a decision about the watched runs."""
        selection = {"run_id": self.run_id, "ticket": self.ticket}
        after: int | None = None
        backoff = BACKOFF_FIRST
        while True:
            try:
                if after is None:
                    page = await self._get(session, DECISIONS, selection, REQUEST_TIMEOUT)
                else:
                    page = await self._get(session, DECISIONS, {**selection, "after": after,
                                                                "wait": LONG_POLL_SECONDS},
                                           LONG_POLL_SECONDS + REQUEST_TIMEOUT)
                    if page.get("decisions"):
                        self._poke()
                after = int(page.get("next_after", after or 0))
                backoff = BACKOFF_FIRST
                continue
            except (_Away, ClientError):  # e.g. 403 for an agent's token: the interval still works
                pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX if after is not None else 30.0)


async def _main(watcher: Watcher) -> None:
    if await until_signalled(watcher.run()):
        click.echo("Watch stopped.")


@cli.command("watch")
@click.option("--all", "all_runs", is_flag=True, help="Every active run (the default).")
@click.option("--ticket", default=None, help="Only the runs of this ticket.")
@click.option("--run-id", default=None, help="Only this run; exit 0 once it is done, failed or stopped.")
@click.option("--notify-cmd", default="", metavar="COMMAND",
              help="Run this command on each alert (split like a shell would, run without one), with "
                   "METAWSM_EVENT, METAWSM_MESSAGE, METAWSM_RUN_ID, METAWSM_RUN_STATUS, METAWSM_TICKETS.")
@click.option("--bell", is_flag=True, help="Ring the terminal bell with each alert.")
@click.option("--interval", default=2.0, show_default=True, type=float,
              help="Seconds between checks when no event wakes the watch.")
@server_option
@reports_errors
def watch(all_runs: bool, ticket: str | None, run_id: str | None, notify_cmd: str, bell: bool, interval: float,
          server: str) -> None:
    """Alert when a run needs a human: guidance needed, run done/failed/stopped, agent unhealthy.

    Each alert is printed once per cause (not again on every check) with the commands that help.
    With --run-id the watch ends (exit 0) once the run is completed, closed, failed or stopped.
    """
    check_selection(all_runs, ticket, run_id)
    if interval <= 0:
        fail("--interval must be > 0", 2)
    try:
        argv = shlex.split(notify_cmd)
    except ValueError as error:
        fail(f"invalid --notify-cmd: {error}", 2)
    watcher = Watcher(server, ticket, run_id, interval, argv, bell)
    try:
        alerts = watcher.first_check()  # ClientError → one error line (unknown run: exit 2; no daemon: 1)
        click.echo(f"Watching run {run_id}." if run_id else
                   f"Watching the active runs of ticket {ticket}." if ticket else "Watching all active runs.")
        click.echo(ALERTS_LINE)
        asyncio.run(_watch(watcher, alerts))
    except KeyboardInterrupt:  # a Ctrl-C before the loop's handlers were installed
        click.echo("Watch stopped.")


async def _watch(watcher: Watcher, first: list[Alert]) -> None:
    await watcher.report(first)
    if not watcher.finished:
        await _main(watcher)
