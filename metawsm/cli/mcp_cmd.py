"""``metawsm mcp``: the forum as MCP tools, over stdio, for the coding agent of this session."""

from __future__ import annotations

import os
import sys

from metawsm.cli.client import ServerAddress, given_token, reports_errors, server_option
from metawsm.cli.main import cli


@cli.command("mcp")
@server_option
@reports_errors
def mcp_command(server: str) -> None:
    """Serve the forum as MCP tools over stdio, for the agent of this session.

    An agent client (Claude Code, Codex, ...) starts it from the run's `.mcp.json`; its tools
    (ask, wait_for_answer, post_progress, complete, validate, get_brief, get_feedback) act as the
    agent named by METAWSM_RUN_ID, METAWSM_TICKET and METAWSM_AGENT, with the token in
    METAWSM_TOKEN. It serves until the client closes its stdin.
    """
    # Imported here: the MCP SDK costs more to load than the rest of the CLI put together.
    import logging

    from metawsm.mcp.caller import IdentityMissing, caller_from_env
    from metawsm.mcp.stdio import run_stdio

    # stdout carries the protocol: every log line goes to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="metawsm mcp: %(levelname)s %(message)s")
    address = ServerAddress.parse(server)  # a bad --server is one error line, exit 2
    caller = caller_from_env(os.environ, server=address.display, token=given_token())
    try:
        caller.require_identity()
    except IdentityMissing as error:  # only reported: every tool call answers with the same message
        print(f"metawsm mcp: warning: {error}", file=sys.stderr)
    try:
        run_stdio(caller)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
