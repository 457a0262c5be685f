"""The forum as MCP tools for coding agents: ``metawsm mcp`` (stdio) and the daemon's ``/mcp`` route.

Nothing here is imported by the rest of the CLI: the MCP SDK is loaded only by the ``mcp``
command and by ``serve`` when it starts the HTTP endpoint.

* :mod:`caller`: who the tools act for (an agent of a run) and where the daemon is;
* :mod:`client`: the daemon's HTTP API and WebSocket stream, as that agent;
* :mod:`args`: the tools' arguments (msgspec Structs; their JSON schemas are the tools' schemas);
* :mod:`tools`: what each tool does;
* :mod:`server`: the MCP server (the SDK's low-level ``Server``) built from the tools;
* :mod:`stdio`, :mod:`http` and :mod:`asgi`: the two transports.
"""
