"""``metawsm forum ...``: threads, posts, queues, events and control signals, all through the daemon.

Every command here is a thin client of the HTTP API (``metawsm/cli/client.py``): it builds one
request, prints the answer (``--json`` for the API's JSON as-is) and maps failures to the exit
codes of the CLI contract (0 ok, 1 daemon unreachable or server error, 2 refused input).  Enum
values (states, priorities, actor types) are checked by the server, so its message — which lists
the allowed values — is the one the user sees.  ``forum signal`` is the exception: it validates
the payload locally with the server's own rules before sending anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from metawsm.cli.client import (
    AGENT_TOKEN_PREFIX,
    DaemonClient,
    Response,
    fail,
    given_token,
    json_option,
    path_segment,
    print_json,
    reports_errors,
    server_option,
)
from metawsm.cli.main import cli
from metawsm.forum.enums import ActorType, ControlType, Priority, QueueType, ThreadState, ViewerType

F = Callable[..., Any]
API = "/api/v1/forum"


def _choices(enum_type: Any) -> str:
    return "|".join(member.value for member in enum_type)


# The vocabularies are the daemon's own (metawsm/forum/enums.py imports only the error classes).
STATES = _choices(ThreadState)
PRIORITIES = _choices(Priority)
ACTOR_TYPES = _choices(ActorType)
VIEWER_TYPES = _choices(ViewerType)
QUEUE_TYPES = _choices(QueueType)
CONTROL_TYPES = _choices(ControlType)


@cli.group("forum")
def forum() -> None:
    """Forum threads, posts, queues and control signals (through the daemon).

    Every command needs a running `metawsm serve` (see --server) and fails fast when it
    cannot be reached.  Exit codes: 0 ok, 1 daemon unreachable or server error, 2 bad usage
    or input refused by the server.
    """


# -- shared options ------------------------------------------------------------------------------


def actor_options(default_type: str, default_name: str = "") -> Callable[[F], F]:
    def decorate(function: F) -> F:
        function = click.option(
            "--actor-name", default=default_name, show_default=bool(default_name),
            help="Name of who acts (recorded on the event).",
        )(function)
        return click.option(
            "--actor-type", default=default_type, show_default=True, metavar=ACTOR_TYPES,
            help="Who acts.",
        )(function)

    return decorate


def thread_id_option(function: F) -> F:
    return click.option("--thread-id", required=True, help="The thread's id (fthr_...).")(function)


def list_filters(function: F) -> F:
    for option in reversed([
        click.option("--ticket", help="Only threads of this ticket."),
        click.option("--run-id", help="Only threads of this run."),
        click.option("--state", metavar=STATES, help="Only threads in this state."),
        click.option("--priority", metavar=PRIORITIES, help="Only threads with this priority."),
        click.option("--assignee", help="Only threads assigned to this name."),
        click.option("--limit", type=int, default=50, show_default=True, help="At most this many threads (1..500)."),
    ]):
        function = option(function)
    return function


def _filters(ticket: str | None, run_id: str | None, state: str | None, priority: str | None,
             assignee: str | None, limit: int | None) -> dict[str, Any]:
    return {"ticket": ticket, "run_id": run_id, "state": state, "priority": priority,
            "assignee": assignee, "limit": limit}


def _actor(actor_type: str, actor_name: str) -> dict[str, Any]:
    """The actor fields of a write.  Inside an agent's session (an agent token), the defaults are
    left out: the daemon records the agent itself, so the documented commands need no flags."""
    given = _given_flags("actor_type", "actor_name") if _speaking_as_agent() else {"actor_type", "actor_name"}
    body: dict[str, Any] = {}
    if "actor_type" in given:
        body["actor_type"] = actor_type
    if actor_name and "actor_name" in given:
        body["actor_name"] = actor_name
    return body


def _speaking_as_agent() -> bool:
    return (given_token() or "").startswith(AGENT_TOKEN_PREFIX)


def _given_flags(*names: str) -> set[str]:
    """Which of ``names`` the user typed (not click's defaults)."""
    ctx = click.get_current_context()
    return {name for name in names if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}


def _printer() -> Any:
    from metawsm.cli.output import Printer

    return Printer()


def _show_write(response: Response, as_json: bool) -> None:
    """A write's result: the thread line, or ``queued: ...`` for a 202."""
    if as_json:
        print_json(response)
        return
    if response.accepted:
        click.echo(f"queued: {response.data.get('event_id', '')} (will apply when the bus recovers)")
        return
    from metawsm.cli.output import print_thread_line

    print_thread_line(_printer(), response.data["thread"])


def _write(server: str, path: str, body: dict[str, Any], as_json: bool) -> None:
    response = DaemonClient(server).post(path, body)
    _show_write(response, as_json)


def _thread_path(thread_id: str, action: str = "") -> str:
    path = f"{API}/threads/{path_segment(thread_id)}"
    return f"{path}/{action}" if action else path


def _more(next_cursor: Any) -> None:
    if next_cursor:
        click.echo(f"more: --cursor {next_cursor}", err=True)


# -- writes -------------------------------------------------------------------------------------


@forum.command("ask")
@click.option("--ticket", required=True, help="Ticket the question belongs to.")
@click.option("--title", required=True, help="Thread title.")
@click.option("--body", required=True, help="The question (first post).")
@click.option("--run-id", default="", help="Run the question comes from.")
@click.option("--agent", default="", help="Agent asking (agent_name).")
@click.option("--priority", default="normal", show_default=True, metavar=PRIORITIES, help="Thread priority.")
@actor_options("agent")
@server_option
@json_option
@reports_errors
def ask(ticket: str, title: str, body: str, run_id: str, agent: str, priority: str,
        actor_type: str, actor_name: str, server: str, as_json: bool) -> None:
    """Open a thread with a question; prints its id, state, priority and title."""
    request = {"ticket": ticket, "title": title, "body": body, "priority": priority, **_actor(actor_type, actor_name)}
    if run_id:
        request["run_id"] = run_id
    if agent:
        request["agent_name"] = agent
    _write(server, f"{API}/threads", request, as_json)


@forum.command("post")
@thread_id_option
@click.option("--body", required=True, help="The post's text.")
@actor_options("human")
@server_option
@json_option
@reports_errors
def post(thread_id: str, body: str, actor_type: str, actor_name: str, server: str, as_json: bool) -> None:
    """Add a post to a thread."""
    _write(server, _thread_path(thread_id, "posts"), {"body": body, **_actor(actor_type, actor_name)}, as_json)


@forum.command("answer")
@thread_id_option
@click.option("--body", required=True, help="The answer's text.")
@actor_options("operator")
@server_option
@json_option
@reports_errors
def answer(thread_id: str, body: str, actor_type: str, actor_name: str, server: str, as_json: bool) -> None:
    """Answer a thread: add a post and move the thread to `answered`."""
    _write(server, _thread_path(thread_id, "answer"), {"body": body, **_actor(actor_type, actor_name)}, as_json)


@forum.command("assign")
@thread_id_option
@click.option("--assignee", required=True, help="Name of the assignee.")
@click.option("--assignee-type", default="operator", show_default=True, metavar=ACTOR_TYPES, help="Kind of assignee.")
@click.option("--note", default="", help="Assignment note.")
@actor_options("human")
@server_option
@json_option
@reports_errors
def assign(thread_id: str, assignee: str, assignee_type: str, note: str, actor_type: str, actor_name: str,
           server: str, as_json: bool) -> None:
    """Assign a thread to someone."""
    request = {"assignee_type": assignee_type, "assignee_name": assignee, **_actor(actor_type, actor_name)}
    if note:
        request["assignment_note"] = note
    _write(server, _thread_path(thread_id, "assign"), request, as_json)


@forum.command("state")
@thread_id_option
@click.option("--state", required=True, metavar=STATES, help="The new state.")
@actor_options("human")
@server_option
@json_option
@reports_errors
def state(thread_id: str, state: str, actor_type: str, actor_name: str, server: str, as_json: bool) -> None:
    """Change a thread's state (the server refuses transitions it does not allow)."""
    _write(server, _thread_path(thread_id, "state"), {"to_state": state, **_actor(actor_type, actor_name)}, as_json)


@forum.command("priority")
@thread_id_option
@click.option("--priority", required=True, metavar=PRIORITIES, help="The new priority.")
@actor_options("human")
@server_option
@json_option
@reports_errors
def priority(thread_id: str, priority: str, actor_type: str, actor_name: str, server: str, as_json: bool) -> None:
    """Set a thread's priority."""
    body = {"priority": priority, **_actor(actor_type, actor_name)}
    _write(server, _thread_path(thread_id, "priority"), body, as_json)


@forum.command("close")
@thread_id_option
@actor_options("human")
@server_option
@json_option
@reports_errors
def close(thread_id: str, actor_type: str, actor_name: str, server: str, as_json: bool) -> None:
    """Close a thread (a closed thread takes no more posts or changes)."""
    _write(server, _thread_path(thread_id, "close"), _actor(actor_type, actor_name), as_json)


# -- reads --------------------------------------------------------------------------------------


@forum.command("list")
@list_filters
@server_option
@json_option
@reports_errors
def list_threads(ticket: str | None, run_id: str | None, state: str | None, priority: str | None,
                 assignee: str | None, limit: int, server: str, as_json: bool) -> None:
    """List threads, most recently updated first."""
    response = DaemonClient(server).get(f"{API}/threads", _filters(ticket, run_id, state, priority, assignee, limit))
    if as_json:
        print_json(response)
        return
    from metawsm.cli.output import print_threads

    print_threads(_printer(), response.data.get("threads", []))


@forum.command("thread")
@thread_id_option
@server_option
@json_option
@reports_errors
def thread(thread_id: str, server: str, as_json: bool) -> None:
    """Show a thread: its header, then its posts oldest first."""
    response = DaemonClient(server).get(_thread_path(thread_id))
    if as_json:
        print_json(response)
        return
    from metawsm.cli.output import print_thread_detail

    print_thread_detail(_printer(), response.data)


@forum.command("search")
@click.option("--query", required=True, help="Words to find in titles and posts (all must match).")
@list_filters
@click.option("--cursor", help="Continue after a previous page (its next_cursor).")
@server_option
@json_option
@reports_errors
def search(query: str, ticket: str | None, run_id: str | None, state: str | None, priority: str | None,
           assignee: str | None, limit: int, cursor: str | None, server: str, as_json: bool) -> None:
    """Search thread titles and posts."""
    params = {"query": query, **_filters(ticket, run_id, state, priority, assignee, limit), "cursor": cursor}
    response = DaemonClient(server).get(f"{API}/search", params)
    if as_json:
        print_json(response)
        return
    from metawsm.cli.output import print_threads

    print_threads(_printer(), response.data.get("threads", []), empty="no matching threads")
    _more(response.data.get("next_cursor"))


@forum.command("queue")
@click.option("--type", "queue_type", required=True, metavar=QUEUE_TYPES, help="Which queue.")
@click.option("--viewer-type", metavar=VIEWER_TYPES, help="Whose queue: kind of viewer.")
@click.option("--viewer-id", help="Whose queue: the viewer's id.")
@list_filters
@click.option("--cursor", help="Continue after a previous page (its next_cursor).")
@server_option
@json_option
@reports_errors
def queue(queue_type: str, viewer_type: str | None, viewer_id: str | None, ticket: str | None,
          run_id: str | None, state: str | None, priority: str | None, assignee: str | None, limit: int,
          cursor: str | None, server: str, as_json: bool) -> None:
    """A viewer's unseen or unanswered threads (closed threads are never queued)."""
    params = {"type": queue_type, "viewer_type": viewer_type, "viewer_id": viewer_id,
              **_filters(ticket, run_id, state, priority, assignee, limit), "cursor": cursor}
    response = DaemonClient(server).get(f"{API}/queues", params)
    if as_json:
        print_json(response)
        return
    from metawsm.cli.output import print_threads

    print_threads(_printer(), response.data.get("threads", []), empty=f"the {queue_type} queue is empty")
    _more(response.data.get("next_cursor"))


@forum.command("seen")
@thread_id_option
@click.option("--viewer-type", required=True, metavar=VIEWER_TYPES, help="Kind of viewer.")
@click.option("--viewer-id", required=True, help="The viewer's id.")
@click.option("--sequence", type=click.IntRange(min=0), help="Seen up to this event sequence  [default: latest]")
@server_option
@json_option
@reports_errors
def seen(thread_id: str, viewer_type: str, viewer_id: str, sequence: int | None, server: str, as_json: bool) -> None:
    """Record that a viewer has seen a thread (up to its latest event by default)."""
    body: dict[str, Any] = {"viewer_type": viewer_type, "viewer_id": viewer_id}
    if sequence is not None:
        body["last_seen_event_sequence"] = sequence
    response = DaemonClient(server).post(_thread_path(thread_id, "seen"), body, ok=(200,))
    if as_json:
        print_json(response)
        return
    marker = response.data.get("seen", {})
    p = _printer()
    cells = [marker.get("thread_id"), f"{marker.get('viewer_type')}/{marker.get('viewer_id')}",
             marker.get("last_seen_event_sequence"), p.time(marker.get("seen_at"))]
    if p.tty:
        p.line(f"{p.style(str(cells[0]), 'bold')}  seen by {cells[1]} up to sequence {cells[2]} at {cells[3]}")
    else:
        p.line("\t".join(p.cell(c) for c in cells))


@forum.command("watch")
@click.option("--ticket", help="Only events of this ticket.")
@click.option("--run-id", help="Only events of this run.")
@click.option("--cursor", type=click.IntRange(min=0),
              help="Replay events after this sequence first  [default: now, live events only]")
@server_option
@json_option
@reports_errors
def watch(ticket: str | None, run_id: str | None, cursor: int | None, server: str, as_json: bool) -> None:
    """Follow the live event stream, one line per event, until Ctrl-C.

    Lines read `<sequence> <event_type> <thread_id> <actor> <summary>` (--json: one event
    object per line).  When the connection drops (the daemon restarts) it prints
    `reconnecting…` on stderr and resumes from the last cursor: no event is lost or shown twice.
    """
    DaemonClient(server).probe()  # fail fast before paying for the aiohttp import
    from metawsm.cli.watch import watch_stream

    raise SystemExit(watch_stream(server, ticket=ticket, run_id=run_id, cursor=cursor, as_json=as_json))


@forum.command("events")
@click.option("--ticket", help="Only events of this ticket.")
@click.option("--run-id", help="Only events of this run.")
@click.option("--cursor", type=click.IntRange(min=0), help="Events after this sequence  [default: 0]")
@click.option("--limit", type=int, help="At most this many events (1..1000)  [default: 100]")
@server_option
@json_option
@reports_errors
def events(ticket: str | None, run_id: str | None, cursor: int | None, limit: int | None, server: str,
           as_json: bool) -> None:
    """Print the event log after a cursor, one line per event (oldest first)."""
    params = {"ticket": ticket, "run_id": run_id, "cursor": cursor, "limit": limit}
    response = DaemonClient(server).get(f"{API}/events", params)
    if as_json:
        print_json(response)
        return
    from metawsm.cli.output import event_line

    p = _printer()
    items = response.data.get("events", [])
    for event in items:
        p.line(event_line(event))
    if p.tty and not items:
        p.line(p.style("no events", "dim"))
    click.echo(f"next cursor: {response.data.get('next_cursor')}", err=True)


@forum.command("stats")
@click.option("--ticket", help="Only this ticket.")
@click.option("--run-id", help="Only this run.")
@server_option
@json_option
@reports_errors
def stats(ticket: str | None, run_id: str | None, server: str, as_json: bool) -> None:
    """Thread counts by ticket, run, state and priority."""
    response = DaemonClient(server).get(f"{API}/stats", {"ticket": ticket, "run_id": run_id})
    if as_json:
        print_json(response)
        return
    from metawsm.cli.output import PRIORITY_STYLE, STATE_STYLE

    rows = response.data.get("stats", [])
    _printer().table(
        ("TICKET", "RUN", "STATE", "PRIORITY", "THREADS"),
        [[r.get("ticket"), r.get("run_id") or None, r.get("state"), r.get("priority"), r.get("thread_count")]
         for r in rows],
        styles=[None, None, lambda v: STATE_STYLE.get(v, ""), lambda v: PRIORITY_STYLE.get(v, "")],
        empty="no threads",
    )


@forum.command("debug")
@click.option("--ticket", help="Only this ticket.")
@click.option("--run-id", help="Only this run.")
@click.option("--limit", type=int, help="Latest N outbox entries, events and threads (1..500)  [default: 50]")
@server_option
@json_option
@reports_errors
def debug(ticket: str | None, run_id: str | None, limit: int | None, server: str, as_json: bool) -> None:
    """Pipeline snapshot: outbox, parked entries, events, threads and the real Redis stream keys."""
    response = DaemonClient(server).get(f"{API}/debug", {"ticket": ticket, "run_id": run_id, "limit": limit})
    if as_json:
        print_json(response)
        return
    from metawsm.cli.output import print_debug

    print_debug(_printer(), response.data.get("debug", {}))


@forum.command("rebuild")
@click.option("--projection", default="", help="Rebuild only this projection  [default: all]")
@server_option
@json_option
@reports_errors
def rebuild(projection: str, server: str, as_json: bool) -> None:
    """Rebuild read-model projections from the event log."""
    body = {"projection": projection} if projection else {}
    response = DaemonClient(server).post(f"{API}/rebuild", body, ok=(200,), read_timeout=300.0)
    if as_json:
        print_json(response)
        return
    items = (response.data.get("rebuild") or {}).get("projections", [])
    _printer().table(
        ("PROJECTION", "EVENTS", "LAST SEQUENCE", "MS"),
        [[i.get("projection"), i.get("events_replayed"), i.get("last_sequence"),
          f"{float(i.get('duration_ms') or 0):.1f}"] for i in items],
    )


# -- control signals -----------------------------------------------------------------------------

_SIGNAL_FIELDS = ("question", "context", "answer", "summary", "status", "done_criteria")


def check_signal(run_id: str, ticket: str, agent_name: str, actor_type: str, payload: dict[str, Any]) -> None:
    """Refuse locally, with the server's own rules and messages, what the server would refuse.

    Mirrors the order of ``metawsm.forum.commands`` (actor type, then run/agent/ticket, then
    the schema-v1 payload).  Imported lazily: only this command needs the rules.
    """
    from metawsm.forum import rules
    from metawsm.forum.errors import ForumError

    try:
        rules.actor_type(actor_type, "operator")
        rules.required_text(run_id, "forum control run_id")
        rules.required_text(agent_name, "forum control agent_name")
        rules.required_text(ticket, "forum control ticket")
        rules.validate_control_payload(payload)
    except ForumError as error:
        fail(error.message, 2)


@forum.command("signal")
@click.option("--run-id", required=True, help="Run the signal is about.")
@click.option("--ticket", required=True, help="The run's ticket.")
@click.option("--agent-name", required=True, help="Agent the signal is about.")
@click.option("--type", "control_type", required=True,
              metavar=CONTROL_TYPES, help="Kind of signal.")
@click.option("--question", help="guidance_request: the question (required).")
@click.option("--context", "context_text", help="guidance_request: context for the question.")
@click.option("--answer", help="guidance_answer: the answer (required).")
@click.option("--summary", help="completion: what was done.")
@click.option("--status", metavar="passed|failed", help="validation: the outcome (required).")
@click.option("--done-criteria", help="validation: the criteria checked (required).")
@actor_options("operator", "operator")
@server_option
@json_option
@reports_errors
def signal(run_id: str, ticket: str, agent_name: str, control_type: str, question: str | None,
           context_text: str | None, answer: str | None, summary: str | None, status: str | None,
           done_criteria: str | None, actor_type: str, actor_name: str, server: str, as_json: bool) -> None:
    """Post a control signal (schema v1) on the agent's control thread; prints that thread's id.

    The payload is checked locally first, with the same rules and messages as the server: a
    signal missing its type's required field is refused (exit 2) without contacting the daemon.
    """
    given = dict(zip(_SIGNAL_FIELDS, (question, context_text, answer, summary, status, done_criteria)))
    payload: dict[str, Any] = {"schema_version": 1, "control_type": control_type,
                               "run_id": run_id.strip(), "agent_name": agent_name.strip()}
    payload.update({key: value for key, value in given.items() if value is not None})
    check_signal(run_id, ticket, agent_name, actor_type, payload)
    body = {"run_id": run_id, "ticket": ticket, "agent_name": agent_name, "payload": payload,
            **_actor(actor_type, actor_name)}
    response = DaemonClient(server).post(f"{API}/control/signal", body)
    if as_json or response.accepted:
        _show_write(response, as_json)
        return
    click.echo(response.data["thread"]["thread_id"])
