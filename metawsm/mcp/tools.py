"""What each MCP tool does, as one agent, through the daemon's API.

The forum keeps one control thread per (run, agent): every control signal is a post on it, and
the run's status follows the signals (``guidance_request`` → ``awaiting_guidance``, the
operator's ``guidance_answer`` → ``running``, ``completion`` + a passed ``validation`` →
``completed``).  The tools are thin over that:

* ``ask`` sends a ``guidance_request`` and returns at once (a tool call times out long before a
  person answers); ``wait_for_answer`` then waits on the forum's WebSocket stream, from the
  thread's last event on, so an answer given in between is never missed and nothing is polled.
* ``get_feedback`` keeps its place with the agent's own seen marker on its threads (a forum
  write the daemon stores), so a restarted server neither repeats nor skips feedback.
* Nothing is kept in memory between calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from metawsm.forum.rules import control_thread_title
from metawsm.mcp.args import (
    AskArgs,
    CompleteArgs,
    NoArgs,
    ProgressArgs,
    ValidateArgs,
    WaitArgs,
)
from metawsm.mcp.client import DaemonApi, DaemonError

SIGNAL_PATH = "/api/v1/forum/control/signal"
THREADS_PATH = "/api/v1/forum/threads"
RUNS_PATH = "/api/v1/runs"
CONTROL_SIGNAL = "forum.control.signal"
POST_ADDED = "forum.post.added"
THREAD_OPENED = "forum.thread.opened"
FEEDBACK_AUTHORS = ("operator", "human")  # not the agent itself, not the daemon's system events
STREAM_RECONNECTS = 3  # a stream closed under us is reopened from its cursor this many times per wait


class ToolFailure(Exception):
    """A tool refused the call (nothing to wait for, say): the model reads the message."""


def progress_thread_title(agent: str) -> str:
    return f"Progress: {agent}"


def _quoted(thread_id: str) -> str:
    return quote(thread_id, safe="")


def _thread_id(written: Any) -> str:
    """The thread a write landed on: applied (``{"thread"}``) or queued (202, ``{"thread_id"}``)."""
    if isinstance(written, dict):
        thread = written.get("thread")
        if isinstance(thread, dict):
            return str(thread.get("thread_id", ""))
        return str(written.get("thread_id", ""))
    return ""


def _control_type(event: dict[str, Any]) -> str:
    payload = event.get("payload_json") or {}
    return str(payload.get("control_type", "")) if payload.get("type") == CONTROL_SIGNAL else ""


def _signal_field(event: dict[str, Any], field: str) -> str:
    payload = (event.get("payload_json") or {}).get("payload") or {}
    return str(payload.get(field, ""))


def _author(event: dict[str, Any]) -> str:
    envelope = event.get("envelope") or {}
    return str(envelope.get("actor_name") or envelope.get("actor_type") or "")


def _answered(event: dict[str, Any], thread_id: str) -> dict[str, Any]:
    return {"status": "answered", "answer": _signal_field(event, "answer"), "answered_by": _author(event),
            "thread_id": thread_id}


def _latest_request(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    requests = [e for e in events if _control_type(e) == "guidance_request"]
    return requests[-1] if requests else None


def _answer_after(events: list[dict[str, Any]], sequence: int) -> dict[str, Any] | None:
    return next((e for e in events if e["sequence"] > sequence and _control_type(e) == "guidance_answer"), None)


def _context_text(args: AskArgs) -> str:
    """The request's context: the signal carries question and context only, so the options and
    the urgency are written into the context, where the operator reads them."""
    parts = [args.context.strip()] if args.context.strip() else []
    if args.options:
        parts.append("Options:\n" + "\n".join(f"- {option}" for option in args.options))
    if args.urgency != "normal":
        parts.append(f"Urgency: {args.urgency}")
    return "\n\n".join(parts)


class AgentTools:
    """The tools of one agent (``api.caller``); built per call, it holds nothing that outlives it."""

    def __init__(self, api: DaemonApi) -> None:
        self.api = api
        self.me = api.caller

    # -- asking -----------------------------------------------------------------------------------

    async def ask(self, args: AskArgs) -> dict[str, Any]:
        thread_id = await self._signal("guidance_request", question=args.question, context=_context_text(args))
        return {"thread_id": thread_id, "status": "pending",
                "next": "call wait_for_answer with this thread_id; call it again while it returns pending"}

    async def wait_for_answer(self, args: WaitArgs) -> dict[str, Any]:
        thread_id = args.thread_id.strip() or await self._control_thread_id()
        detail = await self.api.get(f"{THREADS_PATH}/{_quoted(thread_id)}")
        events: list[dict[str, Any]] = detail.get("events") or []
        request = _latest_request(events)
        if request is None:
            raise ToolFailure(f"thread {thread_id} has no guidance request to wait for: ask a question first")
        answer = _answer_after(events, request["sequence"])
        if answer is None and args.timeout_seconds > 0:
            thread = detail.get("thread") or {}
            cursor = max(event["sequence"] for event in events)
            answer = await self._watch_for_answer(thread, thread_id, cursor, args.timeout_seconds)
        if answer is not None:
            return _answered(answer, thread_id)
        return {"status": "pending", "thread_id": thread_id, "question": _signal_field(request, "question"),
                "next": "no answer yet: call wait_for_answer again (meanwhile, work on what does not depend on it)"}

    async def _watch_for_answer(self, thread: dict[str, Any], thread_id: str, cursor: int,
                                timeout: float) -> dict[str, Any] | None:
        """The first ``guidance_answer`` on the thread after ``cursor``, or None after ``timeout`` seconds.

        The stream replays every event after ``cursor`` before going live, so an answer committed
        between the thread read and the subscription is delivered too.  A stream the daemon closes
        (a slow-client close, a restart) is reopened from the last cursor it reported.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        run_id, ticket = str(thread.get("run_id", "")), str(thread.get("ticket", self.me.ticket))
        for _ in range(STREAM_RECONNECTS + 1):
            async with self.api.stream(run_id=run_id, ticket=ticket, cursor=cursor) as ws:
                while True:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return None
                    try:
                        async with asyncio.timeout(remaining):
                            message = await ws.receive()
                    except TimeoutError:
                        return None
                    if message.type is not aiohttp.WSMsgType.TEXT:
                        break  # closed: reopen from the cursor
                    frame = json.loads(message.data)
                    if frame.get("type") == "error":
                        raise DaemonError(f"the forum stream failed: {frame.get('message', '')}")
                    cursor = max(cursor, int(frame.get("next_cursor") or 0))
                    for event in frame.get("events") or []:
                        if (event.get("envelope") or {}).get("thread_id") == thread_id \
                                and _control_type(event) == "guidance_answer":
                            return dict(event)
        raise DaemonError("the forum stream kept closing; call wait_for_answer again")

    # -- reporting --------------------------------------------------------------------------------

    async def post_progress(self, args: ProgressArgs) -> dict[str, Any]:
        """A note on the control thread; before the agent's first signal there is none yet, so the
        note opens (or goes to) its progress thread instead."""
        control, progress = await self._threads()
        target = control or progress
        if target is not None:
            thread_id = str(target["thread_id"])
            written = await self.api.post(f"{THREADS_PATH}/{_quoted(thread_id)}/posts", {
                "body": args.note, "actor_type": "agent", "actor_name": self.me.agent})
        else:
            written = await self.api.post(THREADS_PATH, {
                "ticket": self.me.ticket, "run_id": self.me.run_id, "agent_name": self.me.agent,
                "title": progress_thread_title(self.me.agent), "body": args.note,
                "actor_type": "agent", "actor_name": self.me.agent})
            thread_id = _thread_id(written)
        return {"posted": True, "thread_id": thread_id}

    async def complete(self, args: CompleteArgs) -> dict[str, Any]:
        thread_id = await self._signal("completion", summary=args.summary)
        return {"signalled": "completion", "thread_id": thread_id,
                "next": "call validate with status passed (or failed) and the brief's done criteria"}

    async def validate(self, args: ValidateArgs) -> dict[str, Any]:
        thread_id = await self._signal("validation", status=args.status, done_criteria=args.done_criteria)
        return {"signalled": "validation", "status": args.status, "thread_id": thread_id}

    # -- reading ----------------------------------------------------------------------------------

    async def get_brief(self, _args: NoArgs | None = None) -> dict[str, Any]:
        run = (await self.api.get(f"{RUNS_PATH}/{_quoted(self.me.run_id)}"))["run"]
        mine = [a for a in run.get("agents") or [] if a.get("name") == self.me.agent]
        agent = next((a for a in mine if a.get("ticket", self.me.ticket) == self.me.ticket), mine[0] if mine else {})
        workspace = str(agent.get("workspace") or self.me.workspace)
        directory = Path(str(run.get("workspace_root", ""))) / workspace
        brief = run.get("brief")
        return {
            "run_id": run["run_id"], "mode": run.get("mode", ""), "status": run.get("status", ""),
            "ticket": self.me.ticket, "agent": self.me.agent,
            "brief": brief if brief is not None else None,
            "workspace": workspace,
            "working_directory": agent.get("workspace_path", str(directory)),
            "workspace_directory": str(directory),
            "repos": {repo: str(directory / repo) for repo in run.get("repos") or []},
            "run_file": str(directory / ".metawsm" / "run.json"),
            "brief_file": str(directory / ".metawsm" / "brief.md") if brief is not None else "",
        }

    async def get_feedback(self, _args: NoArgs | None = None) -> dict[str, Any]:
        """What the operator (or a person) wrote to the agent since the last call: on its control and
        progress threads, and in threads they opened in its run and ticket for it or for every
        agent (``metawsm iterate`` posts its feedback so)."""
        listed = await self._listed()
        control, progress = self._own(listed)
        addressed = [t for t in listed if t.get("opened_by_type") in FEEDBACK_AUTHORS
                     and t.get("agent_name", "") in ("", self.me.agent)]
        items: list[dict[str, Any]] = []
        seen: set[str] = set()
        for thread in [t for t in (control, progress) if t is not None] + addressed:
            if thread["thread_id"] not in seen:
                seen.add(thread["thread_id"])
                items += await self._feedback_on(str(thread["thread_id"]))
        items.sort(key=lambda item: item["sequence"])
        return {"feedback": items, "count": len(items)}

    async def _feedback_on(self, thread_id: str) -> list[dict[str, Any]]:
        seen_path = f"{THREADS_PATH}/{_quoted(thread_id)}/seen"
        viewer = {"viewer_type": "agent", "viewer_id": self.me.agent}
        # A marker never moves back: sequence 0 reads the agent's marker without moving it.
        marker = await self.api.post(seen_path, {**viewer, "last_seen_event_sequence": 0})
        since = int(marker["seen"]["last_seen_event_sequence"])
        events: list[dict[str, Any]] = (await self.api.get(f"{THREADS_PATH}/{_quoted(thread_id)}")).get("events") or []
        items = []
        for event in events:
            envelope = event.get("envelope") or {}
            if event["sequence"] <= since or envelope.get("actor_type") not in FEEDBACK_AUTHORS:
                continue
            kind, text = self._feedback_text(event)
            if kind:
                items.append({"kind": kind, "text": text, "from": _author(event), "at": envelope.get("occurred_at", ""),
                              "thread_id": thread_id, "sequence": event["sequence"]})
        newest = max((int(event["sequence"]) for event in events), default=since)
        if newest > since:
            await self.api.post(seen_path, {**viewer, "last_seen_event_sequence": newest})
        return items

    @staticmethod
    def _feedback_text(event: dict[str, Any]) -> tuple[str, str]:
        payload = event.get("payload_json") or {}
        if payload.get("type") == THREAD_OPENED:
            return "thread", f"{payload.get('title', '')}\n\n{payload.get('body', '')}"
        if payload.get("type") == POST_ADDED:
            return "post", str(payload.get("body", ""))
        if _control_type(event) == "guidance_answer":
            return "answer", _signal_field(event, "answer")
        return "", ""

    # -- plumbing ---------------------------------------------------------------------------------

    async def _signal(self, control_type: str, **fields: str) -> str:
        me = self.me
        payload = {"schema_version": 1, "control_type": control_type, "run_id": me.run_id, "agent_name": me.agent,
                   **{key: value for key, value in fields.items() if value}}
        written = await self.api.post(SIGNAL_PATH, {
            "run_id": me.run_id, "ticket": me.ticket, "agent_name": me.agent,
            "actor_type": "agent", "actor_name": me.agent, "payload": payload})
        if isinstance(written, dict) and "thread" not in written:
            # Queued (202: the bus is slow or down): the id it names is the one a first signal would
            # give a new control thread, so the existing control thread, if any, is the answer.
            control, _ = await self._threads()
            if control is not None:
                return str(control["thread_id"])
        return _thread_id(written)

    async def _threads(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The agent's control thread and progress thread in its run and ticket (None when absent)."""
        return self._own(await self._listed())

    async def _listed(self) -> list[dict[str, Any]]:
        """The threads of the agent's run and ticket (the newest 500)."""
        listed = await self.api.get(THREADS_PATH, {"run_id": self.me.run_id, "ticket": self.me.ticket, "limit": 500})
        return list(listed.get("threads") or [])

    def _own(self, listed: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        mine = [t for t in listed if t.get("agent_name") == self.me.agent]

        def titled(title: str) -> dict[str, Any] | None:
            return next((t for t in mine if t.get("title") == title), None)

        return titled(control_thread_title(self.me.agent)), titled(progress_thread_title(self.me.agent))

    async def _control_thread_id(self) -> str:
        control, _ = await self._threads()
        if control is None:
            raise ToolFailure("you have asked no question yet: call ask first")
        return str(control["thread_id"])


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    args: type
    run: Callable[[AgentTools, Any], Awaitable[dict[str, Any]]]
    read_only: bool = False


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "ask", "Ask the operator",
        "Ask the human operator who supervises this run a question, and return at once with "
        '{thread_id, status: "pending"}. Use it when you need a decision you should not take alone: '
        "an ambiguity in the brief, a trade-off, access you lack. The run shows as waiting for guidance "
        "until the operator answers. Then call wait_for_answer(thread_id), again while it returns pending, "
        "and meanwhile go on with whatever does not depend on the answer.",
        AskArgs, AgentTools.ask),
    ToolSpec(
        "wait_for_answer", "Wait for the operator's answer",
        "Wait for the operator's answer to your question: the one in thread_id, or your latest one. Returns "
        '{status: "answered", answer, answered_by} as soon as there is an answer (at once if it is already '
        'there), or {status: "pending"} after timeout_seconds (default 45, at most 50): then call it again.',
        WaitArgs, AgentTools.wait_for_answer, read_only=True),
    ToolSpec(
        "post_progress", "Post a progress note",
        "Post a short progress note for the operator on your control thread (at a milestone, or before a "
        "long step). It does not change the run's status and nobody has to answer it.",
        ProgressArgs, AgentTools.post_progress),
    ToolSpec(
        "complete", "Signal completion",
        "Tell the operator your work on this ticket is complete, with a summary of what you did and where. "
        "Commit your work first. Then call validate.",
        CompleteArgs, AgentTools.complete),
    ToolSpec(
        "validate", "Report validation",
        'Report whether the brief\'s done criteria are met: status "passed" or "failed", and done_criteria '
        "repeating the brief's done criteria exactly (get_brief shows them). The run is completed once every "
        "agent has signalled completion and a passed validation.",
        ValidateArgs, AgentTools.validate),
    ToolSpec(
        "get_brief", "Read the brief",
        "The run's brief (goal, scope, done criteria, constraints, merge intent, questions and answers "
        "recorded for you) and your workspace: the working directory and the path of each repository.",
        NoArgs, AgentTools.get_brief, read_only=True),
    ToolSpec(
        "get_feedback", "Read new feedback",
        "What the operator wrote to you since you last called get_feedback, oldest first: posts and answers on "
        "your threads, and threads opened for you or for every agent of the run (such as review feedback). "
        "Call it between steps: the operator may correct your course without being asked.",
        NoArgs, AgentTools.get_feedback),
)
