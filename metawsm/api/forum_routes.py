"""Forum routes: threads, posts, state, signals, queues, search, events, stats, debug."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from metawsm.actors.forum.messages import RebuildResult
from metawsm.api.auth import confine_signal, confine_to_run, confine_viewer, identity, speak_as
from metawsm.api.codec import json_response, parse_query, read_body
from metawsm.api.context import context
from metawsm.api.errors import ErrorResponse
from metawsm.api.idempotency import claim_of
from metawsm.api.registry import Access, Route
from metawsm.api.schemas import (
    AcceptedResponse,
    BusDebug,
    DebugQuery,
    DebugResponse,
    EventsQuery,
    EventsResponse,
    ForumDebug,
    ListThreadsQuery,
    QueueQuery,
    RebuildBody,
    RebuildItem,
    RebuildResponse,
    ReplayedMessage,
    ReplayResponse,
    SearchQuery,
    SeenResponse,
    StatsQuery,
    StatsResponse,
    ThreadDetailResponse,
    ThreadPageResponse,
    ThreadResponse,
    ThreadsResponse,
    TopicDebug,
    ViewerQuery,
)
from metawsm.clock import now_text
from metawsm.forum import registry
from metawsm.forum.reads import ThreadFilters, Viewer
from metawsm.forum.registry import WRITES, RegistryMismatch
from metawsm.forum.requests import (
    AddPostRequest,
    AnswerRequest,
    AssignRequest,
    ChangeStateRequest,
    CloseRequest,
    ControlSignalRequest,
    OpenThreadRequest,
    RebuildRequest,
    SeenRequest,
    SetPriorityRequest,
)
from metawsm.policy import redacted_redis_url

THREAD = registry.THREAD  # /api/v1/forum/threads/{thread_id}
E400 = {400: ErrorResponse}
E404 = {404: ErrorResponse}
E503 = {503: ErrorResponse}  # an actor the request needs is restarting or gone (ActorError)


def _filters(query: Any) -> ThreadFilters:
    return ThreadFilters.parse(
        {"ticket": query.ticket, "run_id": query.run_id, "state": query.state,
         "priority": query.priority, "assignee": query.assignee}
    )


# -- writes ---------------------------------------------------------------------------------------


async def _write(
    request: web.Request, body: Any, thread_id: str = "", default_actor_type: str = "human"
) -> web.Response:
    ctx = context(request)
    started = time.perf_counter()
    result = await ctx.forum.submit(body, thread_id, default_actor_type, idempotency=claim_of(request))
    ctx.metrics.observe_write(result.status, time.perf_counter() - started)
    if result.status == "accepted":
        return json_response(
            AcceptedResponse(accepted=True, thread_id=result.thread_id, event_id=result.event_id), status=202
        )
    assert result.thread is not None, "an applied write always carries its thread"
    return json_response(ThreadResponse(thread=result.thread))


async def open_thread(request: web.Request) -> web.Response:
    body = speak_as(request, await read_body(request, OpenThreadRequest))
    who = identity(request)
    if who.is_agent:  # an agent opens threads in its own run's ticket, as itself
        confine_to_run(request, run_id=body.run_id, ticket=body.ticket, agent_name=body.agent_name)
        body = msgspec.structs.replace(body, run_id=who.run_id, agent_name=who.agent)
    return await _write(request, body)


async def add_post(request: web.Request) -> web.Response:
    body = speak_as(request, await read_body(request, AddPostRequest))
    thread_id = request.match_info["thread_id"]
    if identity(request).is_agent:
        thread = await context(request).forum.read_async(lambda r: r.get_thread(thread_id))
        confine_to_run(request, run_id=thread.run_id, ticket=thread.ticket)
    return await _write(request, body, thread_id)


async def answer(request: web.Request) -> web.Response:
    body = await read_body(request, AnswerRequest)
    return await _write(request, body, request.match_info["thread_id"], default_actor_type="operator")


async def assign(request: web.Request) -> web.Response:
    return await _write(request, await read_body(request, AssignRequest), request.match_info["thread_id"])


async def change_state(request: web.Request) -> web.Response:
    return await _write(request, await read_body(request, ChangeStateRequest), request.match_info["thread_id"])


async def set_priority(request: web.Request) -> web.Response:
    return await _write(request, await read_body(request, SetPriorityRequest), request.match_info["thread_id"])


async def close_thread(request: web.Request) -> web.Response:
    return await _write(request, await read_body(request, CloseRequest), request.match_info["thread_id"])


async def control_signal(request: web.Request) -> web.Response:
    body = speak_as(request, await read_body(request, ControlSignalRequest))
    if identity(request).is_agent:
        confine_signal(request, body.payload.get("control_type"))
        confine_to_run(request, run_id=body.run_id, ticket=body.ticket, agent_name=body.agent_name)
    return await _write(request, body, default_actor_type="operator")


async def mark_seen(request: web.Request) -> web.Response:
    body = await read_body(request, SeenRequest)
    confine_viewer(request, body.viewer_type, body.viewer_id)
    thread_id = request.match_info["thread_id"]
    marker = await context(request).forum.mark_seen(
        thread_id, body.viewer_type, body.viewer_id, body.last_seen_event_sequence
    )
    return json_response(SeenResponse(seen=marker))


# -- reads ----------------------------------------------------------------------------------------


async def list_threads(request: web.Request) -> web.Response:
    q = parse_query(request, ListThreadsQuery)
    filters = _filters(q)
    viewer = Viewer.parse(q.viewer_type, q.viewer_id)
    threads = await context(request).forum.read_async(lambda r: r.list_threads(filters, viewer, q.limit))
    return json_response(ThreadsResponse(threads=threads))


async def thread_detail(request: web.Request) -> web.Response:
    q = parse_query(request, ViewerQuery)
    viewer = Viewer.parse(q.viewer_type, q.viewer_id)
    thread_id = request.match_info["thread_id"]
    detail = await context(request).forum.read_async(lambda r: r.thread_detail(thread_id, viewer))
    return json_response(ThreadDetailResponse(thread=detail.thread, posts=detail.posts, events=detail.events))


async def search(request: web.Request) -> web.Response:
    q = parse_query(request, SearchQuery)
    filters = _filters(q)
    viewer = Viewer.parse(q.viewer_type, q.viewer_id)
    threads, cursor = await context(request).forum.read_async(
        lambda r: r.search(q.query, filters, q.cursor, q.limit, viewer)
    )
    return json_response(ThreadPageResponse(threads=threads, next_cursor=cursor))


async def queues(request: web.Request) -> web.Response:
    q = parse_query(request, QueueQuery)
    filters = _filters(q)
    threads, cursor = await context(request).forum.read_async(
        lambda r: r.queue(q.type, q.viewer_type, q.viewer_id, filters, q.cursor, q.limit)
    )
    return json_response(ThreadPageResponse(threads=threads, next_cursor=cursor))


async def events(request: web.Request) -> web.Response:
    q = parse_query(request, EventsQuery)
    items, cursor = await context(request).forum.read_async(
        lambda r: r.events_after(q.ticket, q.run_id, q.cursor, q.limit)
    )
    return json_response(EventsResponse(events=items, next_cursor=cursor))


async def stats(request: web.Request) -> web.Response:
    q = parse_query(request, StatsQuery)
    rows = await context(request).forum.read_async(lambda r: r.stats(q.ticket, q.run_id))
    return json_response(StatsResponse(stats=rows))


async def debug(request: web.Request) -> web.Response:
    q = parse_query(request, DebugQuery)
    ctx = context(request)
    forum = ctx.services.policy.forum

    def snapshot(r: Any) -> dict[str, Any]:
        filters = ThreadFilters.parse({"ticket": q.ticket, "run_id": q.run_id})
        return {
            "outbox": r.outbox_stats(),
            "outbox_messages": r.latest_outbox(q.limit, q.ticket, q.run_id),
            "parked": r.parked(q.limit),
            "events": r.latest_events(q.limit, q.ticket, q.run_id),
            "threads": r.list_threads(filters, None, q.limit),
            "control_threads": r.control_threads(q.ticket, q.run_id),
            "control_state": r.control_state(q.run_id),
            "projection_lag": r.projection_lag(),
        }

    data = await ctx.forum.read_async(snapshot)
    topics = ctx.services.topics.all_commands() + ctx.services.topics.all_events()
    bus_status = ctx.services.bus
    try:
        infos = await asyncio.get_running_loop().run_in_executor(None, ctx.extra["describe_topics"], topics)
    except Exception as error:  # noqa: BLE001 - Redis down: show what we know
        infos = []
        bus_status.mark_unhealthy(str(error))
    bus = BusDebug(
        running=bus_status.consumer_running,
        healthy=bus_status.healthy,
        health_error=bus_status.error,
        redis_url=redacted_redis_url(ctx.services.redis_url),
        stream_name=forum.redis.stream,
        consumer_group=forum.redis.group,
        consumer_name=forum.redis.consumer,
        topics=[TopicDebug(**{f: getattr(i, f) for f in TopicDebug.__struct_fields__}) for i in infos],
    )
    snapshot_body = ForumDebug(generated_at=now_text(), ticket=q.ticket or "", run_id=q.run_id or "", bus=bus, **data)
    return json_response(DebugResponse(debug=snapshot_body))


async def rebuild(request: web.Request) -> web.Response:
    body = await read_body(request, RebuildRequest)
    results: list[RebuildResult] = await context(request).forum.rebuild(body.projection)
    items = [RebuildItem(projection=r.projection, events_replayed=r.events_replayed,
                         last_sequence=r.last_sequence, duration_ms=r.duration_ms) for r in results]
    return json_response(RebuildResponse(rebuild=RebuildBody(projections=items)))


async def replay_parked(request: web.Request) -> web.Response:
    result = await context(request).forum.replay_parked(request.match_info["message_id"])
    return json_response(ReplayResponse(message=ReplayedMessage(**result)))


# The handler of each forum write (metawsm/forum/registry.py WRITES), and who may call it.
WRITE_HANDLERS: dict[str, tuple[Any, Access | None]] = {
    "open_thread": (open_thread, Access.AGENT),
    "add_post": (add_post, Access.AGENT),
    "answer": (answer, None),
    "assign_thread": (assign, None),
    "change_state": (change_state, None),
    "set_priority": (set_priority, None),
    "close_thread": (close_thread, None),
    "control_signal": (control_signal, Access.AGENT),
}


def _write_routes() -> dict[str, Route]:
    """One route per registered write: path, summary and body from the registry."""
    missing = [w.name for w in WRITES if w.name not in WRITE_HANDLERS]
    unknown = sorted(set(WRITE_HANDLERS) - {w.name for w in WRITES})
    if missing or unknown:
        raise RegistryMismatch(
            f"metawsm/api/forum_routes.py WRITE_HANDLERS: no handler for {missing}, unknown writes {unknown}"
            " (see metawsm/forum/registry.py)"
        )
    responses = {200: ThreadResponse, 202: AcceptedResponse, **E400, **E404, 409: ErrorResponse, **E503}
    routes = {}
    for spec in WRITES:
        handler, access = WRITE_HANDLERS[spec.name]
        routes[spec.name] = Route("POST", spec.path, handler, spec.summary, "forum", body=spec.request,
                                  responses=responses, access=access)
    return routes


def routes() -> list[Route]:
    write = _write_routes()
    return [
        Route("GET", "/api/v1/forum/threads", list_threads, "List threads, newest update first", "forum",
              query=ListThreadsQuery, responses={200: ThreadsResponse, **E400}),
        write.pop("open_thread"),
        Route("GET", THREAD, thread_detail, "A thread with its posts and events", "forum",
              query=ViewerQuery, responses={200: ThreadDetailResponse, **E400, **E404}),
        write.pop("add_post"),
        write.pop("answer"),
        write.pop("assign_thread"),
        write.pop("change_state"),
        write.pop("set_priority"),
        write.pop("close_thread"),
        Route("POST", THREAD + "/seen", mark_seen, "Record a viewer's seen marker", "forum",
              body=SeenRequest, responses={200: SeenResponse, **E400, **E404}, access=Access.AGENT),
        Route("GET", "/api/v1/forum/search", search, "Search titles and posts", "forum",
              query=SearchQuery, responses={200: ThreadPageResponse, **E400}),
        Route("GET", "/api/v1/forum/queues", queues, "Unseen or unanswered threads for a viewer", "forum",
              query=QueueQuery, responses={200: ThreadPageResponse, **E400}),
        write.pop("control_signal"),
        *write.values(),  # any other registered write (none today)
        Route("GET", "/api/v1/forum/events", events, "The event log after a cursor", "forum",
              query=EventsQuery, responses={200: EventsResponse, **E400}),
        Route("GET", "/api/v1/forum/stats", stats, "Thread counts by ticket, run, state and priority", "forum",
              query=StatsQuery, responses={200: StatsResponse, **E400}),
        Route("GET", "/api/v1/forum/debug", debug, "Pipeline snapshot incl. real Redis stream keys", "debug",
              query=DebugQuery, responses={200: DebugResponse, **E400}, access=Access.OPERATOR),
        Route("POST", "/api/v1/forum/rebuild", rebuild, "Rebuild projections from the event log", "forum",
              body=RebuildRequest, responses={200: RebuildResponse, **E400, **E503}),
        Route("POST", "/api/v1/forum/parked/{message_id}/replay", replay_parked, "Replay a parked entry", "forum",
              responses={200: ReplayResponse, **E400, **E404, **E503}),
    ]
