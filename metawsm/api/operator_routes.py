"""The operator's decisions (docs/operator.md), read at once or long-polled.

``GET /api/v1/operator/decisions?after=N&wait=S`` answers the decisions with an id above ``N``; when
there are none yet and ``S`` > 0 it waits up to ``S`` seconds for one.  The wait is event-driven:
one listener per application on :class:`metawsm.operator.feed.DecisionFeed` resolves a future on the
event loop each time the operator stores a decision, and every waiting request then reads SQLite
again (the table is the truth; the announcement is only the wake-up).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Annotated

import msgspec
from aiohttp import web

from metawsm.api.codec import json_response, parse_query
from metawsm.api.context import ApiContext, context
from metawsm.api.errors import ApiError, ErrorResponse
from metawsm.api.registry import Access, Route
from metawsm.api.schemas import OperatorDecision
from metawsm.operator.feed import DecisionFeed
from metawsm.operator.model import Decision
from metawsm.services import Services
from metawsm.store import schema_operator

MAX_WAIT_SECONDS = 30
_WAITER_KEY = "operator_decision_waiter"


class DecisionsQuery(msgspec.Struct, kw_only=True):
    run_id: str | None = None
    ticket: str | None = None  # the decision's ticket, or one of its run's tickets
    after: Annotated[int, msgspec.Meta(ge=0, description="Only decisions with a higher id.")] = 0
    wait: Annotated[float, msgspec.Meta(ge=0, le=MAX_WAIT_SECONDS,
                                        description="Seconds to wait for a decision when none is there yet.")] = 0


class DecisionsPage(msgspec.Struct, kw_only=True):
    decisions: list[OperatorDecision]
    next_after: int  # the highest id answered, else the request's ``after``: pass it as the next ``after``


class DecisionWaiter:
    """Wakes the long-polls of one application when the operator stores a decision.

    ``announce`` runs on the operator actor's thread and only hops to the loop.  Each announcement
    resolves the current future and puts a fresh one in its place, so a request that took the
    future before reading SQLite cannot miss a decision stored while it read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, feed: DecisionFeed, ending: threading.Event) -> None:
        self.loop = loop
        self.feed = feed
        self.ending = False  # the daemon is stopping: a long-poll with nothing to answer gets a 503 at once
        self._changed: asyncio.Future[None] = loop.create_future()
        feed.add(self.announce)
        # ``ActorSystem.failed`` is set when serve stops (or the system fails), before the HTTP
        # server drains its requests; a thread of its own waits for it (not one of the loop's
        # executor threads, which serve the reads).
        threading.Thread(target=self._await_end, args=(ending,), name="operator-long-poll-end", daemon=True).start()

    def _await_end(self, ending: threading.Event) -> None:
        ending.wait()
        try:
            self.loop.call_soon_threadsafe(self._end)
        except RuntimeError:  # the loop is already closed
            pass
        self.feed.remove(self.announce)

    def _end(self) -> None:
        self.ending = True
        self._wake()

    def announce(self, _decision: Decision) -> None:
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: this application is gone
            self.feed.remove(self.announce)

    def _wake(self) -> None:
        changed, self._changed = self._changed, self.loop.create_future()
        changed.set_result(None)

    def changed(self) -> asyncio.Future[None]:
        return self._changed


def _waiter(ctx: ApiContext) -> DecisionWaiter:
    waiter = ctx.extra.get(_WAITER_KEY)
    if not isinstance(waiter, DecisionWaiter):  # the first long-poll of this application
        waiter = ctx.extra[_WAITER_KEY] = DecisionWaiter(asyncio.get_running_loop(), ctx.services.decisions,
                                                         ctx.system.failed)
    return waiter


def _matches(decision: Decision, ticket: str | None) -> bool:
    return ticket is None or decision.ticket == ticket or ticket in decision.tickets


def _decisions(services: Services, query: DecisionsQuery) -> list[Decision]:
    conn = services.db.connect(read_only=True)
    try:
        found = schema_operator.decisions(conn, query.run_id or None, after_id=query.after)
    finally:
        conn.close()
    return [d for d in found if _matches(d, query.ticket or None)]


async def list_decisions(request: web.Request) -> web.Response:
    query = parse_query(request, DecisionsQuery)
    ctx = context(request)
    loop = asyncio.get_running_loop()
    waiter = _waiter(ctx) if query.wait > 0 else None
    deadline = loop.time() + query.wait
    while True:
        changed = waiter.changed() if waiter is not None else None  # taken before reading: no lost wake-up
        found = await loop.run_in_executor(None, _decisions, ctx.services, query)
        remaining = deadline - loop.time()
        if found or changed is None or remaining <= 0:
            break
        if waiter is not None and waiter.ending:
            raise ApiError(503, "unavailable", "the daemon is stopping; ask again once it is back")
        await asyncio.wait((changed,), timeout=remaining)
    next_after = max((d.id for d in found), default=query.after)
    return json_response(DecisionsPage(decisions=found, next_after=next_after))


def routes() -> list[Route]:
    return [
        Route("GET", "/api/v1/operator/decisions", list_decisions,
              "The operator's decisions, oldest first; with wait, a long-poll for new ones", "operator",
              query=DecisionsQuery, responses={200: DecisionsPage, 400: ErrorResponse, 503: ErrorResponse},
              access=Access.OPERATOR),
    ]
