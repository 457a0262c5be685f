"""The tools' arguments: one msgspec Struct per tool, whose JSON schema is the tool's input schema.

Descriptions are written for the model that calls the tools.  Arguments are decoded strictly
(unknown names and wrong types are refused with msgspec's message, which names the argument);
values the daemon checks itself (a validation status, say) are left to the daemon, so its own
sentence reaches the model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

MAX_WAIT_SECONDS = 50  # under the tool-call timeouts of common MCP clients (often 60 s)
DEFAULT_WAIT_SECONDS = 45

Urgency = Literal["low", "normal", "high", "urgent"]


class _Args(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class AskArgs(_Args, kw_only=True):
    question: Annotated[str, msgspec.Meta(
        min_length=1, description="The question for the operator, in one or two sentences.")]
    context: Annotated[str, msgspec.Meta(
        description="What the operator needs to know to answer: what you found, tried, and what is at stake.")] = ""
    options: Annotated[list[str], msgspec.Meta(
        max_length=20, description="The choices you see, if any, e.g. [\"Postgres\", \"SQLite\"].")] = []
    urgency: Annotated[Urgency, msgspec.Meta(
        description="How soon you need the answer: low, normal (default), high or urgent.")] = "normal"


class WaitArgs(_Args, kw_only=True):
    thread_id: Annotated[str, msgspec.Meta(
        description="The thread_id that ask returned; leave it out to wait for your latest question.")] = ""
    timeout_seconds: Annotated[float, msgspec.Meta(
        ge=0, le=MAX_WAIT_SECONDS,
        description=f"How long to wait, in seconds (default {DEFAULT_WAIT_SECONDS}, at most {MAX_WAIT_SECONDS}).")
    ] = DEFAULT_WAIT_SECONDS


class ProgressArgs(_Args, kw_only=True):
    note: Annotated[str, msgspec.Meta(min_length=1, description="A short progress note for the operator.")]


class CompleteArgs(_Args, kw_only=True):
    summary: Annotated[str, msgspec.Meta(
        description="What you did: the changes, where they are, anything the operator should check.")] = ""


class ValidateArgs(_Args, kw_only=True):
    status: Annotated[str, msgspec.Meta(
        description="passed when the done criteria are met, failed when they are not.",
        extra_json_schema={"enum": ["passed", "failed"]})]
    done_criteria: Annotated[str, msgspec.Meta(
        description="The brief's done criteria, repeated exactly as get_brief shows them.")]


class NoArgs(_Args, kw_only=True):
    pass


def input_schema(args: type[_Args]) -> dict[str, Any]:
    """The JSON schema of one tool's arguments: an object at the root, as MCP requires."""
    _, components = msgspec.json.schema_components([args], ref_template="#/$defs/{name}")
    body: dict[str, Any] = dict(components[args.__name__])
    body.pop("title", None)  # the tool has a name and a title of its own
    body.setdefault("properties", {})
    return body


def decode(args: type[_Args], arguments: dict[str, Any] | None) -> Any:
    """The tool's arguments, checked; raises ``msgspec.ValidationError`` naming the argument."""
    return msgspec.convert(arguments or {}, type=args)
