"""``GET /api/v1/policy``: the policy this daemon applies to the next run, and the file it reads.

``metawsm policy check`` compares a policy file with this answer to say what an edit would
change. The Redis password is masked, as everywhere the daemon shows its Redis URL.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from metawsm.api.codec import json_response
from metawsm.api.context import context
from metawsm.api.registry import Access, Route
from metawsm.policy import Policy, redacted_policy


class PolicyResponse(msgspec.Struct, kw_only=True):
    # Absolute path of the file re-read when a run is planned; "" when the daemon was given its
    # policy in-process (then it never changes).
    path: str
    # In effect: the file as last read (at start-up or when the latest run was planned), with
    # forum, supervision and debug as they were at start-up (they need a restart).
    policy: Policy


async def get_policy(request: web.Request) -> web.Response:
    services = context(request).services
    return json_response(PolicyResponse(path=services.policy_path, policy=redacted_policy(services.policy)))


def routes() -> list[Route]:
    return [
        Route("GET", "/api/v1/policy", get_policy, "The policy in effect and the file it is read from", "system",
              responses={200: PolicyResponse}, access=Access.OPERATOR,
              description="Forum, supervision and debug are the start-up values; every other field is what "
                          "the next run gets unless the file changed since it was last read."),
    ]
