"""Who the MCP tools act for: one agent of one run, and how to reach the daemon as that agent.

Over stdio the identity comes from the agent session's environment (the ``METAWSM_*`` variables
the daemon sets, see :mod:`metawsm.runs.agent_env`); over HTTP it comes from the agent token of
the request.  Nothing else is remembered between tool calls: a server killed and restarted by its
agent carries on where it was.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

SERVER_VAR = "METAWSM_SERVER"
RUN_VAR = "METAWSM_RUN_ID"
TICKET_VAR = "METAWSM_TICKET"
AGENT_VAR = "METAWSM_AGENT"
TOKEN_VAR = "METAWSM_TOKEN"
WORKSPACE_VAR = "METAWSM_WORKSPACE"
DEFAULT_SERVER = "http://127.0.0.1:3001"


class IdentityMissing(Exception):
    """The agent's identity is incomplete: every tool call answers with this message."""


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    server: str  # the daemon's base URL
    token: str | None  # None: find it as the CLI does (the daemon's token file); "": tokens are off
    run_id: str
    ticket: str
    agent: str
    workspace: str = ""

    def require_identity(self) -> None:
        missing = [name for name, value in ((RUN_VAR, self.run_id), (TICKET_VAR, self.ticket),
                                            (AGENT_VAR, self.agent)) if not value]
        if missing:
            raise IdentityMissing(
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: metawsm mcp acts for the "
                "agent of a run, and reads who that is from the agent session's environment (the daemon sets "
                "these variables in every agent session; an MCP client must pass them on to the server)")


def caller_from_env(environ: Mapping[str, str], server: str | None = None, token: str | None = None) -> Caller:
    """The agent of this session; ``server`` and ``token`` (the command's flags) win over the environment."""
    given_token = token if token is not None else environ.get(TOKEN_VAR)
    return Caller(
        server=(server or environ.get(SERVER_VAR) or DEFAULT_SERVER).rstrip("/"),
        # An empty METAWSM_TOKEN is what the daemon gives agents without tokens (--no-auth); the
        # CLI then asks the daemon, and so do we, so both behave alike in every session.
        token=(given_token.strip() or None) if given_token is not None else None,
        run_id=environ.get(RUN_VAR, "").strip(),
        ticket=environ.get(TICKET_VAR, "").strip(),
        agent=environ.get(AGENT_VAR, "").strip(),
        workspace=environ.get(WORKSPACE_VAR, "").strip(),
    )
