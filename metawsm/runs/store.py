"""SQL for the run tables: runs, run_steps, run_agents, run_briefs, events.

Status changes are compare-and-set (``UPDATE ... WHERE status = ?``) and each one is
recorded in ``events`` in the same transaction, so two writers can never both move a run.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import msgspec

from metawsm.clock import now_text
from metawsm.runs.model import DELIVERY_STEPS, Brief, RunNotFound, RunSpec, transition_allowed, transition_error
from metawsm.store import write_transaction

_spec_decoder = msgspec.json.Decoder(RunSpec)
_brief_qa = msgspec.json.Decoder(list[dict[str, str]])


class RunRow(msgspec.Struct, frozen=True):
    run_id: str
    mode: str
    status: str
    spec: RunSpec
    error: str
    created_at: str
    updated_at: str


class StepRow(msgspec.Struct, frozen=True):
    ordinal: int
    ticket: str
    name: str
    status: str
    attempts: int
    error: str
    started_at: str | None
    finished_at: str | None


class AgentRow(msgspec.Struct, frozen=True):
    run_id: str
    agent_name: str
    workspace: str
    session_name: str
    tmux_socket: str
    workspace_path: str
    status: str
    health: str
    pane_pid: int | None
    restarts_used: int
    last_activity_at: str | None
    last_progress_at: str | None
    last_error: str
    updated_at: str


def insert_run(
    conn: sqlite3.Connection,
    spec: RunSpec,
    steps: Iterable[tuple[str, str]],
    agents: Iterable[tuple[str, str, str, str]],
    brief: Brief | None,
) -> None:
    """Create a run in ``created`` with its steps, agents and brief (caller's transaction)."""
    now = spec.created_at
    conn.execute(
        "INSERT INTO runs (run_id, mode, status, tickets_json, repos_json, spec_json, error, created_at, updated_at)"
        " VALUES (?, ?, 'created', ?, ?, ?, '', ?, ?)",
        (spec.run_id, spec.mode, msgspec.json.encode(spec.tickets).decode(), msgspec.json.encode(spec.repos).decode(),
         msgspec.json.encode(spec).decode(), now, now),
    )
    conn.executemany(
        "INSERT INTO run_steps (run_id, ordinal, ticket, name, status, attempts, error)"
        " VALUES (?, ?, ?, ?, 'pending', 0, '')",
        [(spec.run_id, ordinal, ticket, name) for ordinal, (ticket, name) in enumerate(steps, start=1)],
    )
    conn.executemany(
        "INSERT INTO run_agents (run_id, agent_name, workspace, session_name, tmux_socket, workspace_path, status,"
        " health, restarts_used, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', '', 0, ?)",
        [(spec.run_id, name, workspace, session, spec.tmux_socket, path, now)
         for name, workspace, session, path in agents],
    )
    if brief is not None:
        conn.execute(
            "INSERT INTO run_briefs (run_id, ticket, goal, scope, done_criteria, constraints, merge_intent, qa_json,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (spec.run_id, spec.tickets[0], brief.goal, brief.scope, brief.done_criteria, brief.constraints,
             brief.merge_intent, msgspec.json.encode(brief.qa).decode(), now),
        )
    record_event(conn, spec.run_id, "created", "", "created", f"{spec.mode} run for {', '.join(spec.tickets)}")


def record_event(
    conn: sqlite3.Connection, run_id: str, kind: str, from_status: str, to_status: str, message: str
) -> None:
    conn.execute(
        "INSERT INTO events (run_id, at, kind, from_status, to_status, message) VALUES (?, ?, ?, ?, ?, ?)",
        (run_id, now_text(), kind, from_status, to_status, message),
    )


def transition(
    conn: sqlite3.Connection, run_id: str, to_status: str, message: str = "", error: str | None = None
) -> str:
    """Move the run to ``to_status`` if the table allows it; returns the previous status."""
    with write_transaction(conn):
        row = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"run {run_id} not found")
        current = row[0]
        if current == to_status:
            return current
        if not transition_allowed(current, to_status):
            raise transition_error(run_id, current, to_status)
        params: list[Any] = [to_status, now_text()]
        sql = "UPDATE runs SET status = ?, updated_at = ?"
        if error is not None:
            sql += ", error = ?"
            params.append(error)
        sql += " WHERE run_id = ? AND status = ?"
        changed = conn.execute(sql, (*params, run_id, current)).rowcount
        if not changed:  # pragma: no cover - BEGIN IMMEDIATE serialises writers
            raise transition_error(run_id, current, to_status)
        record_event(conn, run_id, "transition", current, to_status, message or error or "")
    return current


def load_run(conn: sqlite3.Connection, run_id: str) -> RunRow:
    row = conn.execute(
        "SELECT run_id, mode, status, spec_json, error, created_at, updated_at FROM runs WHERE run_id = ?", (run_id,)
    ).fetchone()
    if row is None:
        raise RunNotFound(f"run {run_id} not found")
    return RunRow(row[0], row[1], row[2], _spec_decoder.decode(row[3]), row[4] or "", row[5], row[6])


def list_run_ids(conn: sqlite3.Connection, ticket: str | None = None, status: str | None = None) -> list[str]:
    sql = "SELECT run_id, tickets_json FROM runs"
    params: list[Any] = []
    if status:
        sql += " WHERE status = ?"
        params.append(status)
    sql += " ORDER BY created_at DESC, run_id DESC"
    rows = conn.execute(sql, params).fetchall()
    if ticket:
        rows = [r for r in rows if ticket in msgspec.json.decode(r[1])]
    return [r[0] for r in rows]


def latest_run_for_ticket(conn: sqlite3.Connection, ticket: str) -> str:
    ids = list_run_ids(conn, ticket=ticket)
    if not ids:
        raise RunNotFound(f"no run found for ticket {ticket}")
    return ids[0]


def non_terminal_run_ids(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT run_id FROM runs WHERE status != 'closed' ORDER BY created_at").fetchall()
    return [r[0] for r in rows]


def steps(conn: sqlite3.Connection, run_id: str) -> list[StepRow]:
    rows = conn.execute(
        "SELECT ordinal, ticket, name, status, attempts, error, started_at, finished_at FROM run_steps"
        " WHERE run_id = ? ORDER BY ordinal",
        (run_id,),
    ).fetchall()
    return [StepRow(r[0], r[1] or "", r[2], r[3], r[4], r[5] or "", r[6], r[7]) for r in rows]


def update_step(conn: sqlite3.Connection, run_id: str, ordinal: int, status: str, error: str = "") -> None:
    now = now_text()
    with write_transaction(conn):
        if status == "running":
            conn.execute(
                "UPDATE run_steps SET status = ?, attempts = attempts + 1,"
                " started_at = COALESCE(started_at, ?), error = ''"
                " WHERE run_id = ? AND ordinal = ?",
                (status, now, run_id, ordinal),
            )
        else:
            conn.execute(
                "UPDATE run_steps SET status = ?, error = ?, finished_at = ? WHERE run_id = ? AND ordinal = ?",
                (status, error, now, run_id, ordinal),
            )


def reset_steps(conn: sqlite3.Connection, run_id: str) -> None:
    """Set the run's setup steps that are not done back to pending (delivery steps keep their outcome)."""
    marks = ", ".join("?" for _ in DELIVERY_STEPS)
    with write_transaction(conn):
        conn.execute(
            "UPDATE run_steps SET status = 'pending', error = '', started_at = NULL, finished_at = NULL"
            f" WHERE run_id = ? AND status != 'done' AND name NOT IN ({marks})",
            (run_id, *sorted(DELIVERY_STEPS)),
        )


def setup_steps(conn: sqlite3.Connection, run_id: str) -> list[StepRow]:
    """The steps that set the run up (planned with it), without the delivery steps."""
    return [step for step in steps(conn, run_id) if step.name not in DELIVERY_STEPS]


def delivery_step(conn: sqlite3.Connection, run_id: str, ticket: str, name: str) -> int:
    """The ordinal of the run's delivery step ``name`` for ``ticket``, added after the others
    the first time."""
    with write_transaction(conn):
        row = conn.execute("SELECT ordinal FROM run_steps WHERE run_id = ? AND ticket = ? AND name = ?",
                           (run_id, ticket, name)).fetchone()
        if row is not None:
            return int(row[0])
        last = conn.execute("SELECT COALESCE(MAX(ordinal), -1) FROM run_steps WHERE run_id = ?", (run_id,)).fetchone()
        ordinal = int(last[0]) + 1
        conn.execute("INSERT INTO run_steps (run_id, ordinal, ticket, name, status, attempts, error)"
                     " VALUES (?, ?, ?, ?, 'pending', 0, '')", (run_id, ordinal, ticket, name))
        return ordinal


def agents(conn: sqlite3.Connection, run_id: str) -> list[AgentRow]:
    rows = conn.execute(
        "SELECT run_id, agent_name, workspace, session_name, tmux_socket, workspace_path, status, health, pane_pid,"
        " restarts_used, last_activity_at, last_progress_at, last_error, updated_at FROM run_agents WHERE run_id = ?"
        " ORDER BY workspace, agent_name",
        (run_id,),
    ).fetchall()
    # NULL becomes "" except in the columns that are optional (pane_pid, the two activity times).
    values: list[list[Any]] = [[r[i] if r[i] is not None or i in (8, 10, 11) else "" for i in range(14)] for r in rows]
    return [AgentRow(*row) for row in values]


def update_agent(conn: sqlite3.Connection, run_id: str, agent_name: str, workspace: str, **fields: Any) -> None:
    if not fields:
        return
    fields["updated_at"] = now_text()
    columns = ", ".join(f"{name} = ?" for name in fields)
    with write_transaction(conn):
        conn.execute(
            f"UPDATE run_agents SET {columns} WHERE run_id = ? AND agent_name = ? AND workspace = ?",
            (*fields.values(), run_id, agent_name, workspace),
        )


def brief(conn: sqlite3.Connection, run_id: str) -> Brief | None:
    row = conn.execute(
        "SELECT goal, scope, done_criteria, constraints, merge_intent, qa_json FROM run_briefs WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    if row is None:
        return None
    from metawsm.runs.model import QA

    qa = [QA(question=item.get("question", ""), answer=item.get("answer", ""))
          for item in _brief_qa.decode(row[5] or "[]")]
    return Brief(goal=row[0], scope=row[1], done_criteria=row[2], constraints=row[3], merge_intent=row[4], qa=qa)


def run_events(conn: sqlite3.Connection, run_id: str, limit: int = 50) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT at, kind, from_status, to_status, message FROM events WHERE run_id = ? ORDER BY id DESC LIMIT ?",
        (run_id, limit),
    ).fetchall()
    return [{"at": r[0], "kind": r[1], "from": r[2], "to": r[3], "message": r[4]} for r in rows]


def record_iteration(conn: sqlite3.Connection, run_id: str, agent_name: str, feedback: str) -> tuple[int, int]:
    """Record an iteration of the run (``metawsm iterate``) with the newest forum event sequence
    now; returns (iteration number, that sequence)."""
    with write_transaction(conn):
        number = conn.execute("SELECT COALESCE(MAX(iteration), 0) + 1 FROM run_iterations WHERE run_id = ?",
                              (run_id,)).fetchone()[0]
        sequence = conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM forum_events").fetchone()[0]
        conn.execute("INSERT INTO run_iterations (run_id, iteration, agent_name, feedback, forum_sequence, created_at)"
                     " VALUES (?, ?, ?, ?, ?, ?)", (run_id, number, agent_name, feedback, sequence, now_text()))
    return int(number), int(sequence)


def iteration_count(conn: sqlite3.Connection, run_id: str) -> int:
    row = conn.execute("SELECT COALESCE(MAX(iteration), 0) FROM run_iterations WHERE run_id = ?", (run_id,)).fetchone()
    return int(row[0])


def iteration_marks(conn: sqlite3.Connection, run_id: str) -> dict[str, int]:
    """Per agent name ("" for every agent), the forum sequence of its latest iteration."""
    rows = conn.execute("SELECT agent_name, MAX(forum_sequence) FROM run_iterations WHERE run_id = ?"
                        " GROUP BY agent_name", (run_id,)).fetchall()
    return {row[0]: int(row[1]) for row in rows}


def upsert_pull_request(conn: sqlite3.Connection, run_id: str, view: Any) -> None:
    """Record what ``metawsm pr`` did for one (ticket, repo) (a forge.PullRequestView)."""
    now = now_text()
    with write_transaction(conn):
        conn.execute(
            "INSERT INTO run_pull_requests (run_id, ticket, repo, workspace, provider, branch, base_branch,"
            " head_commit, url, number, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (run_id, ticket, repo) DO UPDATE SET workspace = excluded.workspace,"
            " provider = excluded.provider, branch = excluded.branch, base_branch = excluded.base_branch,"
            " head_commit = excluded.head_commit, url = excluded.url, number = excluded.number,"
            " state = excluded.state, updated_at = excluded.updated_at",
            (run_id, view.ticket, view.repo, view.workspace, view.provider, view.branch, view.base_branch,
             view.head_commit, view.url, view.number, view.state, now, now),
        )


def set_pull_request_state(conn: sqlite3.Connection, run_id: str, ticket: str, repo: str, state: str) -> None:
    with write_transaction(conn):
        conn.execute("UPDATE run_pull_requests SET state = ?, updated_at = ?"
                     " WHERE run_id = ? AND ticket = ? AND repo = ?", (state, now_text(), run_id, ticket, repo))


def pull_requests(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT ticket, repo, workspace, provider, branch, base_branch, head_commit, url, number, state, updated_at"
        " FROM run_pull_requests WHERE run_id = ? ORDER BY ticket, repo", (run_id,)).fetchall()
    keys = ("ticket", "repo", "workspace", "provider", "branch", "base_branch", "head_commit", "url", "number",
            "state", "updated_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def record_doc_sync(conn: sqlite3.Connection, run_id: str, ticket: str, workspace: str, status: str,
                    revision: str = "", error: str = "") -> None:
    """The ``seed_docs`` state of one (run, ticket, workspace): pending, synced or failed."""
    with write_transaction(conn):
        conn.execute(
            "INSERT INTO doc_sync_states (run_id, ticket, workspace, status, revision, updated_at, error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, ticket, workspace) DO UPDATE SET"
            " status = excluded.status, revision = excluded.revision, updated_at = excluded.updated_at,"
            " error = excluded.error", (run_id, ticket, workspace, status, revision, now_text(), error))


def doc_sync_states(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT ticket, workspace, status, revision, error, updated_at FROM doc_sync_states"
                        " WHERE run_id = ? ORDER BY ticket, workspace", (run_id,)).fetchall()
    keys = ("ticket", "workspace", "status", "revision", "error", "updated_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def store_review_items(conn: sqlite3.Connection, run_id: str, items: Iterable[Any]) -> list[Any]:
    """Store review items (forge.ReviewItem) once each, ``queued``; returns the ones new here."""
    new: list[Any] = []
    now = now_text()
    with write_transaction(conn):
        for item in items:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO run_review_feedback (run_id, ticket, repo, pr_number, source_type, source_id,"
                " author, state, body, path, line, url, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                (run_id, item.ticket, item.repo, item.pr_number, item.source_type, item.source_id, item.author,
                 item.state, item.body, item.path, item.line, item.url, now)).rowcount
            if inserted:
                new.append(item)
    return new


def review_thread(conn: sqlite3.Connection, run_id: str, repo: str, pr_number: int) -> str:
    row = conn.execute("SELECT thread_id FROM run_review_feedback WHERE run_id = ? AND repo = ? AND pr_number = ?"
                       " AND thread_id != '' LIMIT 1", (run_id, repo, pr_number)).fetchone()
    return row[0] if row else ""


def set_review_thread(conn: sqlite3.Connection, run_id: str, repo: str, pr_number: int, thread_id: str) -> None:
    with write_transaction(conn):
        conn.execute("UPDATE run_review_feedback SET thread_id = ? WHERE run_id = ? AND repo = ? AND pr_number = ?"
                     " AND thread_id = ''", (thread_id, run_id, repo, pr_number))


def queued_reviews(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT ticket, repo, pr_number, source_type, source_id, author, state, body, path, line, url"
                        " FROM run_review_feedback WHERE run_id = ? AND status = 'queued'"
                        " ORDER BY created_at, repo, pr_number, source_type, source_id", (run_id,)).fetchall()
    keys = ("ticket", "repo", "pr_number", "source_type", "source_id", "author", "state", "body", "path", "line",
            "url")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def mark_reviews_dispatched(conn: sqlite3.Connection, run_id: str) -> None:
    with write_transaction(conn):
        conn.execute("UPDATE run_review_feedback SET status = 'dispatched' WHERE run_id = ? AND status = 'queued'",
                     (run_id,))


def review_counts(conn: sqlite3.Connection, run_id: str) -> dict[str, int]:
    rows = conn.execute("SELECT status, COUNT(*) FROM run_review_feedback WHERE run_id = ? GROUP BY status",
                        (run_id,)).fetchall()
    return {row[0]: int(row[1]) for row in rows}
