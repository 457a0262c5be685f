"""Human output of the CLI: ids first, tables for lists, colour only on a terminal.

Two modes, chosen by whether stdout is a terminal:

* **terminal** — aligned columns with a header row, colour (unless ``NO_COLOR`` is set),
  the last column cut to the terminal width, times shortened to ``YYYY-MM-DD HH:MM:SS``.
* **piped** — no colour, no header, tab-separated cells (tabs and newlines inside a value are
  turned into spaces) and times exactly as the API sent them, so ``cut -f1`` gives the ids.

Scripts that want everything should use ``--json`` instead, which prints the API's JSON as-is.
Plain string formatting only: importing a rendering library would cost more start-up time
than it saves.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

_RESET = "\x1b[0m"
_STYLES = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}
STATE_STYLE = {
    "new": "cyan",
    "triaged": "blue",
    "waiting_operator": "yellow",
    "waiting_human": "yellow",
    "answered": "green",
    "closed": "dim",
}
PRIORITY_STYLE = {"low": "dim", "normal": "", "high": "yellow", "urgent": "red"}
STATUS_STYLE = {"ok": "green", "recovering": "yellow", "degraded": "yellow", "failed": "red"}


class Printer:
    """Writes lines to ``stream``; knows whether it is a terminal and may use colour."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.colour = self.tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    # -- primitives ----------------------------------------------------------------------------

    def style(self, text: str, *names: str) -> str:
        codes = [_STYLES[n] for n in names if n and n in _STYLES]
        if not self.colour or not codes or not text:
            return text
        return f"\x1b[{';'.join(codes)}m{text}{_RESET}"

    def line(self, text: str = "") -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def width(self) -> int:
        return shutil.get_terminal_size((120, 24)).columns

    def time(self, value: Any) -> str:
        """An API timestamp: shortened on a terminal, as-is when piped."""
        text = "" if value is None else str(value)
        if not self.tty or len(text) < 19:
            return text
        return text[:10] + " " + text[11:19]

    def cell(self, value: Any) -> str:
        if value is None:
            return "-" if self.tty else ""
        if isinstance(value, bool):
            return "yes" if value else "no"
        text = str(value)
        if not self.tty:
            return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
        text = " ".join(text.split()) if ("\n" in text or "\t" in text) else text
        return text if text else "-"

    # -- tables --------------------------------------------------------------------------------

    def table(
        self,
        headers: Sequence[str],
        rows: Iterable[Sequence[Any]],
        styles: Sequence[Any] | None = None,
        empty: str = "",
    ) -> None:
        """One row per item.  ``styles[i]`` is a style name or a callable(value) -> style name."""
        cells = [[self.cell(v) for v in row] for row in rows]
        if not self.tty:
            for row in cells:
                self.line("\t".join(row))
            return
        if not cells:
            if empty:
                self.line(self.style(empty, "dim"))
            return
        widths = [len(h) for h in headers]
        for row in cells:
            for i, text in enumerate(row[:-1]):
                widths[i] = max(widths[i], len(text))
        prefix = sum(w + 2 for w in widths[:-1])
        last_room = max(self.width() - prefix, 10)
        self.line(self.style("  ".join(h.ljust(widths[i]) if i < len(headers) - 1 else h
                                       for i, h in enumerate(headers)), "bold"))
        for row in cells:
            parts = []
            for i, text in enumerate(row):
                last = i == len(row) - 1
                if last and len(text) > last_room:
                    text = text[: last_room - 1] + "…"
                padded = text if last else text.ljust(widths[i])
                style = styles[i] if styles and i < len(styles) else None
                name = style(text) if callable(style) else style
                parts.append(self.style(padded, name) if name else padded)
            self.line("  ".join(parts).rstrip())

    def fields(self, pairs: Sequence[tuple[str, Any]], indent: str = "") -> None:
        """``label: value`` lines (aligned on a terminal, tab-separated when piped)."""
        shown = [(k, v) for k, v in pairs if v is not None and v != ""]
        if not self.tty:
            for key, value in shown:
                self.line(f"{indent}{key}\t{self.cell(value)}")
            return
        width = max((len(k) for k, _ in shown), default=0)
        for key, value in shown:
            self.line(f"{indent}{self.style((key + ':').ljust(width + 1), 'dim')} {self.cell(value)}")


# -- forum shapes ------------------------------------------------------------------------------

THREAD_HEADERS = ("THREAD", "STATE", "PRIORITY", "TICKET", "RUN", "POSTS", "UPDATED", "TITLE")


def thread_rows(p: Printer, threads: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    rows = []
    for t in threads:
        title = t.get("title", "")
        if t.get("is_unseen"):
            title = "* " + title if p.tty else title
        rows.append([t.get("thread_id"), t.get("state"), t.get("priority"), t.get("ticket"),
                     t.get("run_id") or None, t.get("posts_count"), p.time(t.get("updated_at")), title])
    return rows


def print_threads(p: Printer, threads: Sequence[Mapping[str, Any]], empty: str = "no threads") -> None:
    p.table(
        THREAD_HEADERS,
        thread_rows(p, threads),
        styles=[None, lambda v: STATE_STYLE.get(v, ""), lambda v: PRIORITY_STYLE.get(v, "")],
        empty=empty,
    )


def print_thread_line(p: Printer, thread: Mapping[str, Any]) -> None:
    """The one-line result of a write: ``<thread_id> <state> <priority> <title>``."""
    cells = [thread.get("thread_id", ""), thread.get("state", ""), thread.get("priority", ""), thread.get("title", "")]
    if not p.tty:
        p.line("\t".join(p.cell(c) for c in cells))
        return
    p.line("  ".join([
        p.style(str(cells[0]), "bold"),
        p.style(str(cells[1]), STATE_STYLE.get(str(cells[1]), "")),
        p.style(str(cells[2]), PRIORITY_STYLE.get(str(cells[2]), "")),
        p.cell(cells[3]),
    ]))


def _who(kind: Any, name: Any) -> str:
    kind, name = (kind or ""), (name or "")
    if kind and name:
        return f"{kind}/{name}"
    return kind or name or "-"


def print_thread_detail(p: Printer, detail: Mapping[str, Any]) -> None:
    t = detail.get("thread") or {}
    posts = sorted(detail.get("posts") or [], key=lambda post: (post.get("created_at", ""), post.get("post_id", "")))
    if p.tty:
        p.line(f"{p.style(str(t.get('thread_id', '')), 'bold')}  {p.cell(t.get('title', ''))}")
    else:
        p.line(f"{p.cell(t.get('thread_id', ''))}\t{p.cell(t.get('title', ''))}")
    has_assignee = t.get("assignee_type") or t.get("assignee_name")
    assignee = _who(t.get("assignee_type"), t.get("assignee_name")) if has_assignee else None
    state = t.get("state", "")
    priority = t.get("priority", "")
    p.fields([
        ("state", p.style(state, STATE_STYLE.get(state, "")) if p.tty else state),
        ("priority", p.style(priority, PRIORITY_STYLE.get(priority, "")) if p.tty else priority),
        ("assignee", assignee or ("-" if p.tty else "")),
        ("ticket", t.get("ticket")),
        ("run", t.get("run_id")),
        ("agent", t.get("agent_name")),
        ("opened", f"{p.time(t.get('opened_at'))} by {_who(t.get('opened_by_type'), t.get('opened_by_name'))}"),
        ("updated", p.time(t.get("updated_at"))),
        ("closed", p.time(t.get("closed_at")) if t.get("closed_at") else None),
        ("posts", t.get("posts_count")),
    ])
    for post in posts:
        p.line()
        author = _who(post.get("author_type"), post.get("author_name"))
        if p.tty:
            head = p.style(f"{p.time(post.get('created_at'))}  {author}", "bold")
            p.line(head + p.style(f"  {post.get('post_id', '')}", "dim"))
        else:
            p.line(f"{post.get('created_at', '')}\t{author}\t{post.get('post_id', '')}")
        for body_line in str(post.get("body", "")).splitlines() or [""]:
            p.line("    " + body_line)


# -- events ------------------------------------------------------------------------------------


def _first_line(text: Any, limit: int = 80) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def event_summary(event: Mapping[str, Any]) -> str:
    payload = event.get("payload_json") or {}
    kind = payload.get("type") or (event.get("envelope") or {}).get("event_type", "")
    if kind == "forum.thread.opened":
        return f'"{_first_line(payload.get("title"))}" ({payload.get("priority", "")})'
    if kind == "forum.post.added":
        return _first_line(payload.get("body"))
    if kind == "forum.assigned":
        return "to " + _who(payload.get("assignee_type"), payload.get("assignee_name"))
    if kind == "forum.state.changed":
        return f"{payload.get('from_state', '?')} -> {payload.get('to_state', '?')}"
    if kind == "forum.priority.changed":
        return f"{payload.get('from_priority', '?')} -> {payload.get('to_priority', '?')}"
    if kind == "forum.thread.closed":
        return f"{payload.get('from_state', '?')} -> closed"
    if kind == "forum.control.signal":
        control = payload.get("control_type", "")
        inner = payload.get("payload") or {}
        detail = next((inner.get(k) for k in ("question", "answer", "summary", "status") if inner.get(k)), "")
        if control == "validation" and inner.get("done_criteria"):
            detail = f"{detail} ({inner.get('done_criteria')})"
        return f"{control}: {_first_line(detail)}" if detail else str(control)
    return ""


def event_line(event: Mapping[str, Any]) -> str:
    """``<sequence> <event_type> <thread_id> <actor> <summary>`` (one line, no colour)."""
    env = event.get("envelope") or {}
    parts = [
        str(event.get("sequence", "")),
        env.get("event_type", ""),
        env.get("thread_id", ""),
        _who(env.get("actor_type"), env.get("actor_name")),
    ]
    summary = event_summary(event)
    return " ".join(parts) + (f" {summary}" if summary else "")


# -- health and debug --------------------------------------------------------------------------


def print_health(p: Printer, h: Mapping[str, Any]) -> None:
    status = str(h.get("status", "unknown"))
    p.line(f"status: {p.style(status, STATUS_STYLE.get(status, ''), 'bold')}")
    if h.get("reason"):
        p.line(f"reason: {h['reason']}")
    worker = h.get("worker") or {}
    lag = worker.get("lag") or {}
    outbox = h.get("outbox") or {}
    bus = h.get("forum_bus") or {}
    actors = h.get("actors") or {}
    if worker:
        stream_pending = lag.get("stream_pending")
        projection_lag = lag.get("projection_lag") or {}
        lag_text = ", ".join(f"{k} {v}" for k, v in projection_lag.items()) or "-"
        p.line(
            f"worker: {'running' if worker.get('running') else 'stopped'}, "
            f"processed {worker.get('total_processed', 0)}, last {worker.get('last_processed_at') or 'never'}, "
            f"errors {worker.get('consecutive_errors', 0)}"
            + (f" (last: {worker['last_error']})" if worker.get("last_error") else "")
        )
        p.line(
            f"lag: outbox pending {lag.get('outbox_pending', 0)} "
            f"(oldest {lag.get('oldest_pending_age_seconds', 0):g}s), "
            f"stream pending {'unknown' if stream_pending is None else stream_pending}, "
            f"projections: {lag_text}"
        )
    if outbox:
        p.line(
            f"outbox: pending {outbox.get('pending_count', 0)}, processing {outbox.get('processing_count', 0)}, "
            f"failed {outbox.get('failed_count', 0)}, parked {outbox.get('parked_count', 0)}, "
            f"sent {outbox.get('sent_count', 0)}"
        )
    if bus:
        healthy = bool(bus.get("healthy"))
        text = p.style("connected" if healthy else "unreachable", "green" if healthy else "red")
        p.line(f"redis: {text} {bus.get('redis_url', '')}" + (f" ({bus['error']})" if bus.get("error") else ""))
    if actors:
        p.line(
            f"actors: {actors.get('alive', 0)}/{actors.get('total', 0)} alive, "
            f"{actors.get('restarting', 0)} restarting, {actors.get('restarts_total', 0)} restarts"
        )


def print_debug(p: Printer, d: Mapping[str, Any]) -> None:
    scope = ", ".join(f"{k} {d[k]}" for k in ("ticket", "run_id") if d.get(k)) or "all"
    p.line(f"forum debug snapshot at {d.get('generated_at', '')} ({scope})")
    outbox = d.get("outbox") or {}
    p.line(
        f"outbox: pending {outbox.get('pending_count', 0)}, processing {outbox.get('processing_count', 0)}, "
        f"failed {outbox.get('failed_count', 0)}, parked {outbox.get('parked_count', 0)}, "
        f"sent {outbox.get('sent_count', 0)}"
    )
    lag = d.get("projection_lag") or {}
    p.line("projection lag: " + (", ".join(f"{k} {v}" for k, v in lag.items()) or "-"))
    bus = d.get("bus") or {}
    p.line(
        f"bus: {'running' if bus.get('running') else 'stopped'}, {'healthy' if bus.get('healthy') else 'unhealthy'}"
        + (f" ({bus['health_error']})" if bus.get("health_error") else "")
        + f", redis {bus.get('redis_url', '')}, stream {bus.get('stream_name', '')}, "
        f"group {bus.get('consumer_group', '')}, consumer {bus.get('consumer_name', '')}"
    )
    p.line()
    p.table(
        ("STREAM", "TOPIC", "EXISTS", "LENGTH", "LAST ID", "GROUP", "PENDING", "LAG"),
        [[t.get("stream"), t.get("topic"), t.get("stream_exists"), t.get("stream_length"), t.get("last_generated_id"),
          t.get("consumer_group_present"), t.get("consumer_group_pending"), t.get("consumer_group_lag")]
         for t in bus.get("topics") or []],
        empty="no topics (Redis unreachable?)",
    )
    parked = d.get("parked") or []
    if parked:
        p.line()
        p.line(f"parked ({len(parked)}):")
        p.table(("MESSAGE", "TOPIC", "ATTEMPTS", "PARKED", "ERROR"),
                [[m.get("message_id"), m.get("topic"), m.get("attempts"), p.time(m.get("parked_at")),
                  m.get("last_error")] for m in parked])
    messages = d.get("outbox_messages") or []
    if messages:
        p.line()
        p.line(f"latest outbox entries ({len(messages)}):")
        p.table(("ID", "MESSAGE", "TOPIC", "STATUS", "ATTEMPTS", "UPDATED", "ERROR"),
                [[m.get("id"), m.get("message_id"), m.get("topic"), m.get("status"), m.get("attempt_count"),
                  p.time(m.get("updated_at")), m.get("last_error")] for m in messages])
    controls = d.get("control_state") or []
    if controls:
        p.line()
        p.line(f"control state ({len(controls)}):")
        p.table(("RUN", "AGENT", "THREAD", "GUIDANCE", "COMPLETION", "VALIDATION", "PENDING QUESTION"),
                [[c.get("run_id"), c.get("agent_name"), c.get("thread_id"),
                  "pending" if c.get("pending_guidance") else "-",
                  "yes" if c.get("completion_signalled") else "-",
                  c.get("validation_status") or "-", c.get("pending_question")] for c in controls])
    events = d.get("events") or []
    if events:
        p.line()
        p.line(f"latest events ({len(events)}):")
        for event in events:
            p.line(event_line(event))
    threads = d.get("threads") or []
    if threads:
        p.line()
        p.line(f"threads ({len(threads)}):")
        print_threads(p, threads)
