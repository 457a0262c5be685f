"""Read routes the web UI needs beyond the forum and run APIs (docs/ui.md).

* ``GET /api/v1/ui/excerpts`` — per thread, what a board card shows: the latest post (author,
  time, a short excerpt; control signals summarised) and, for a control thread whose agent waits,
  the pending guidance question.
* ``GET /api/v1/runs/{run_id}/agents/{agent_name}/pane`` — the tail of an agent's pane (the log
  file the daemon pipes the tmux pane into), whole or incrementally with ``after_bytes``.
* ``GET /api/v1/runs/{run_id}/changes`` — per workspace and repository, the files changed against
  the base branch and their unified diff (committed and uncommitted work, untracked files too).

All three are the operator's (they show agents' output and code).  Workspace and log paths come
from what the daemon stored for the run, never from the request: the client only names a run, an
agent and optionally a workspace, and those are looked up in the run's own rows.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import msgspec
from aiohttp import web

from metawsm.api.codec import json_response, parse_query
from metawsm.api.context import context
from metawsm.api.errors import ApiError, ErrorResponse
from metawsm.api.registry import Access, Route
from metawsm.runs import store
from metawsm.runs.providers.workspace import WorkspaceError, run_git

EXCERPT_CHARS = 280
PANE_LINES = 200
PANE_MAX_BYTES = 256 * 1024  # the most one answer carries of a pane log
DIFF_MAX_BYTES = 512 * 1024  # the most one answer carries of diff text (per repository)
UNTRACKED_DIFFS = 200  # new files beyond this many are listed, not diffed (one git call each)

Line = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")]


# -- shapes -------------------------------------------------------------------------------------


class ExcerptQuery(msgspec.Struct, kw_only=True):
    ticket: Line | None = None
    run_id: Line | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 500


class ThreadExcerpt(msgspec.Struct, kw_only=True, omit_defaults=True):
    thread_id: str
    author_type: str = ""
    author_name: str = ""
    posted_at: str = ""
    excerpt: str = ""
    control_type: str = ""  # the latest post is a control signal of this type
    pending_question: str = ""  # a control thread whose agent waits for guidance
    pending_context: str = ""
    pending_agent: str = ""
    pending_at: str = ""


class ExcerptsResponse(msgspec.Struct, kw_only=True):
    excerpts: list[ThreadExcerpt]


class PaneQuery(msgspec.Struct, kw_only=True):
    workspace: Line | None = None
    after_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**53)] | None = None
    lines: Annotated[int, msgspec.Meta(ge=1, le=2000)] = PANE_LINES


class PaneTail(msgspec.Struct, kw_only=True):
    run_id: str
    agent_name: str
    workspace: str
    session: str
    log_path: str
    exists: bool
    size: int  # the log's size: pass it back as after_bytes for what comes next
    start: int  # the byte offset ``text`` starts at
    reset: bool  # True: ``text`` replaces what the client holds (first read, or the log was truncated)
    text: str


class PaneResponse(msgspec.Struct, kw_only=True):
    pane: PaneTail


class ChangesQuery(msgspec.Struct, kw_only=True):
    workspace: Line | None = None


class ChangedFile(msgspec.Struct, kw_only=True):
    path: str
    status: str  # A, M, D, R, ... as git says; ? for untracked


class RepoChanges(msgspec.Struct, kw_only=True, omit_defaults=True):
    workspace: str
    repo: str
    path: str = ""
    base_branch: str = ""
    merge_base: str = ""
    files: list[ChangedFile] = []
    diff: str = ""
    truncated: bool = False
    error: str = ""


class ChangesResponse(msgspec.Struct, kw_only=True):
    run_id: str
    changes: list[RepoChanges]


# -- helpers ------------------------------------------------------------------------------------


async def _read(request: web.Request, query: Any) -> Any:
    """Run ``query(conn)`` on a read-only connection of its own, off the event loop."""
    db = context(request).services.db

    def work() -> Any:
        conn = db.connect(read_only=True)
        try:
            return query(conn)
        finally:
            conn.close()

    return await asyncio.to_thread(work)


def _summary(body: str) -> tuple[str, str]:
    """(excerpt, control_type) of a post body; control signals (JSON) are summarised."""
    text = body or ""
    if text.startswith("{"):
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("control_type"), str):
            kind = payload["control_type"]
            detail = next((str(payload[k]) for k in ("question", "answer", "summary", "status")
                           if isinstance(payload.get(k), str) and payload.get(k)), "")
            return _clip(f"{kind.replace('_', ' ')}: {detail}" if detail else kind.replace("_", " ")), kind
    return _clip(text), ""


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXCERPT_CHARS else flat[:EXCERPT_CHARS - 1].rstrip() + "…"


# -- excerpts -----------------------------------------------------------------------------------


def _excerpts(conn: sqlite3.Connection, query: ExcerptQuery) -> list[ThreadExcerpt]:
    where, params = [], []
    if query.ticket:
        where.append("v.ticket = ?")
        params.append(query.ticket)
    if query.run_id:
        where.append("v.run_id = ?")
        params.append(query.run_id)
    sql = ("SELECT v.thread_id, p.author_type, p.author_name, p.body, p.created_at FROM forum_thread_views v"
           " LEFT JOIN forum_posts p ON p.post_id = (SELECT q.post_id FROM forum_posts q"
           " WHERE q.thread_id = v.thread_id"
           " ORDER BY q.created_at DESC, q.post_id DESC LIMIT 1)"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY v.updated_at DESC LIMIT ?")
    rows = conn.execute(sql, [*params, query.limit]).fetchall()
    pending: dict[str, tuple[str, str, str, str]] = {}
    for thread_id, question, context_text, agent, at in conn.execute(
            "SELECT c.thread_id, c.pending_question, c.pending_context, c.agent_name,"
            " COALESCE(p.created_at, c.last_signal_at) FROM forum_control_state c"
            " LEFT JOIN forum_posts p ON p.event_id = c.pending_event_id"
            " WHERE c.pending_guidance = 1 AND c.thread_id IS NOT NULL AND c.thread_id != ''"):
        pending[thread_id] = (question or "", context_text or "", agent or "", at or "")
    out: list[ThreadExcerpt] = []
    for thread_id, author_type, author_name, body, created_at in rows:
        excerpt, kind = _summary(body or "")
        item = ThreadExcerpt(thread_id=thread_id, author_type=author_type or "", author_name=author_name or "",
                             posted_at=created_at or "", excerpt=excerpt, control_type=kind)
        if thread_id in pending:
            question, context_text, agent, at = pending[thread_id]
            item = msgspec.structs.replace(item, pending_question=question, pending_context=context_text,
                                           pending_agent=agent, pending_at=at)
        out.append(item)
    return out


async def excerpts(request: web.Request) -> web.Response:
    query = parse_query(request, ExcerptQuery)
    items = await _read(request, lambda conn: _excerpts(conn, query))
    return json_response(ExcerptsResponse(excerpts=items))


# -- pane tail ----------------------------------------------------------------------------------


def _agent_row(conn: sqlite3.Connection, run_id: str, agent_name: str, workspace: str | None) -> store.AgentRow:
    store.load_run(conn, run_id)  # 404 run_not_found for an unknown run
    rows = [r for r in store.agents(conn, run_id) if r.agent_name == agent_name
            and (not workspace or r.workspace == workspace)]
    if not rows:
        where = f" in workspace {workspace}" if workspace else ""
        raise ApiError(404, "not_found", f"run {run_id} has no agent {agent_name}{where}")
    return rows[0]


def _tail(path: Path, after: int | None, lines: int) -> tuple[bool, int, int, bool, str]:
    """(exists, size, start, reset, text) of the log at ``path``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False, 0, 0, True, ""
    if after is not None and after <= size and size - after <= PANE_MAX_BYTES:
        with path.open("rb") as file:
            file.seek(after)
            data = file.read(size - after)
        return True, after + len(data), after, False, data.decode("utf-8", errors="replace")
    start = max(0, size - PANE_MAX_BYTES)
    with path.open("rb") as file:
        file.seek(start)
        data = file.read(size - start)
    text = data.decode("utf-8", errors="replace")
    kept = text.splitlines(keepends=True)[-lines:]
    tail = "".join(kept)
    return True, start + len(data), start + len(data) - len(tail.encode("utf-8", errors="replace")), True, tail


async def pane(request: web.Request) -> web.Response:
    query = parse_query(request, PaneQuery)
    run_id, agent_name = request.match_info["run_id"], request.match_info["agent_name"]
    row = await _read(request, lambda conn: _agent_row(conn, run_id, agent_name, query.workspace))
    base = Path(context(request).services.base_dir)
    log_path = base / ".metawsm" / "logs" / f"{row.session_name}.log"
    exists, size, start, reset, text = await asyncio.to_thread(_tail, log_path, query.after_bytes, query.lines)
    return json_response(PaneResponse(pane=PaneTail(
        run_id=run_id, agent_name=agent_name, workspace=row.workspace, session=row.session_name,
        log_path=str(log_path), exists=exists, size=size, start=max(0, start), reset=reset, text=text)))


# -- changes ------------------------------------------------------------------------------------


def _repo_changes(workspace: str, repo: str, path: Path, base_branch: str) -> RepoChanges:
    base = RepoChanges(workspace=workspace, repo=repo, path=str(path), base_branch=base_branch)
    if not path.is_dir():
        return msgspec.structs.replace(base, error=f"{path} does not exist (cleaned up?)")
    where = ["--no-optional-locks", "-C", str(path)]
    try:
        found = run_git([*where, "merge-base", base_branch, "HEAD"], check=False)
        merge_base = found.stdout.strip() if found.returncode == 0 else ""
        if not merge_base:
            detail = found.stderr.strip() or "no common commit"
            return msgspec.structs.replace(base, error=f"cannot compare with {base_branch}: {detail}")
        names = run_git([*where, "diff", "--name-status", "--no-renames", "-z", merge_base], what="git diff")
        files: list[ChangedFile] = []
        parts = names.stdout.split("\0")
        for index in range(0, len(parts) - 1, 2):
            files.append(ChangedFile(status=parts[index], path=parts[index + 1]))
        untracked = run_git([*where, "ls-files", "--others", "--exclude-standard", "-z"], what="git ls-files")
        new_paths = [p for p in untracked.stdout.split("\0") if p]
        files.extend(ChangedFile(status="?", path=p) for p in new_paths)
        diff = run_git([*where, "diff", "--no-color", "--no-ext-diff", "--no-renames", merge_base],
                       what="git diff").stdout
        for new in new_paths[:UNTRACKED_DIFFS]:
            if len(diff) > DIFF_MAX_BYTES:
                break
            # --no-index exits 1 when the files differ, which they do: a new file against nothing.
            diff += run_git([*where, "diff", "--no-color", "--no-ext-diff", "--no-index", "--", os.devnull, new],
                            check=False).stdout
    except WorkspaceError as error:
        return msgspec.structs.replace(base, error=str(error))
    truncated = len(diff) > DIFF_MAX_BYTES or len(new_paths) > UNTRACKED_DIFFS
    return msgspec.structs.replace(base, merge_base=merge_base, files=sorted(files, key=lambda f: f.path),
                                   diff=diff[:DIFF_MAX_BYTES], truncated=truncated)


def _workspaces(conn: sqlite3.Connection, run_id: str, workspace: str | None) -> list[tuple[str, str, Path, str]]:
    """(workspace, repo, checkout path, base branch) from the run's stored spec and agents."""
    spec = store.load_run(conn, run_id).spec
    names = sorted({a.workspace for a in store.agents(conn, run_id)})
    if workspace:
        if workspace not in names:
            raise ApiError(404, "not_found", f"run {run_id} has no workspace {workspace}")
        names = [workspace]
    return [(name, repo, Path(spec.workspace_root) / name / repo, spec.base_branch or "main")
            for name in names for repo in spec.repos]


async def changes(request: web.Request) -> web.Response:
    query = parse_query(request, ChangesQuery)
    run_id = request.match_info["run_id"]
    targets = await _read(request, lambda conn: _workspaces(conn, run_id, query.workspace))

    def collect() -> list[RepoChanges]:
        return [_repo_changes(name, repo, path, branch) for name, repo, path, branch in targets]

    return json_response(ChangesResponse(run_id=run_id, changes=await asyncio.to_thread(collect)))


def routes() -> list[Route]:
    errors = {400: ErrorResponse, 404: ErrorResponse}
    return [
        Route("GET", "/api/v1/ui/excerpts", excerpts, "Board card excerpts: latest post and pending question",
              "forum", query=ExcerptQuery, responses={200: ExcerptsResponse, 400: ErrorResponse},
              access=Access.OPERATOR),
        Route("GET", "/api/v1/runs/{run_id}/agents/{agent_name}/pane", pane,
              "The tail of an agent's pane log (incremental with after_bytes)", "runs", query=PaneQuery,
              responses={200: PaneResponse, **errors}, access=Access.OPERATOR),
        Route("GET", "/api/v1/runs/{run_id}/changes", changes,
              "Changed files and unified diff of each workspace against the base branch", "runs",
              query=ChangesQuery, responses={200: ChangesResponse, **errors}, access=Access.OPERATOR),
    ]
