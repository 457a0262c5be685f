"""The OpenAPI 3.1 document, generated from the route table and the msgspec types."""

from __future__ import annotations

import re
import types
import typing
from typing import Any

import msgspec

from metawsm import __version__
from metawsm.api.idempotency import HEADER, KEY_SCHEMA
from metawsm.api.registry import Access, RouteTable
from metawsm.forum.projections.registry import PROJECTION_NAMES
from metawsm.text import ecma_pattern, non_blank_pattern

REF = "#/components/schemas/{name}"
_PATH_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


# Text fields the forum rules require to be non-blank.  The request types (metawsm.forum.requests)
# keep them plain ``str`` so that the rules word the refusal; the document states the constraint.
NON_BLANK = {
    "OpenThreadRequest": ("ticket", "title", "body"),
    "AddPostRequest": ("body",),
    "AnswerRequest": ("body",),
    "AssignRequest": ("assignee_name",),
    "ControlSignalRequest": ("run_id", "ticket", "agent_name"),
    "SeenRequest": ("viewer_id",),
}


def _members(kind: Any) -> tuple[type, ...]:
    """The Struct types a body or response is: one, or the members of a union (a route that
    answers one of several shapes, such as a run action: a run, or a cleanup summary)."""
    if isinstance(kind, types.UnionType):
        return typing.get_args(kind)
    return (kind,) if isinstance(kind, type) else ()


def build_openapi(table: RouteTable) -> bytes:
    documented = [route for route in table.routes if route.openapi]
    kinds: list[Any] = []
    for route in documented:
        for kind in (route.body, route.query, *route.responses.values()):
            kinds += [member for member in _members(kind) if member not in kinds]
    schemas, components = msgspec.json.schema_components(kinds, ref_template=REF)
    schema_of: dict[Any, Any] = dict(zip(kinds, schemas))
    for route in documented:
        for kind in route.responses.values():
            if isinstance(kind, types.UnionType):
                # msgspec only describes unions of tagged Structs; these are told apart by their key.
                schema_of[kind] = {"anyOf": [schema_of[member] for member in _members(kind)]}
    rebuild = components.get("RebuildRequest", {}).get("properties", {}).get("projection")
    if rebuild is not None:
        rebuild["enum"] = ["", *PROJECTION_NAMES]
        rebuild["description"] = "One projection to rebuild; empty (or absent) rebuilds them all."
    _ecma_patterns(components)
    for name, fields in NON_BLANK.items():
        properties = components.get(name, {}).get("properties", {})
        for field in fields:
            if field in properties:
                prop = properties[field]
                prop.update({"minLength": 1, "pattern": non_blank_pattern(prop.get("pattern", ""))})
    paths: dict[str, dict[str, Any]] = {}
    for route in documented:
        path = _PATH_PARAM.sub(lambda m: "{" + m.group(1) + "}", route.path)
        operation: dict[str, Any] = {
            "summary": route.summary,
            "tags": [route.tag],
            "operationId": route.operation_id or _operation_id(route.method, path),
            "responses": {},
        }
        if route.description:
            operation["description"] = route.description
        parameters = [
            {"name": name, "in": "path", "required": True,
             "schema": {"type": "string", "enum": route.path_enums[name]} if name in route.path_enums
             else {"type": "string", "minLength": 1}}
            for name in _PATH_PARAM.findall(route.path)
        ]
        if route.query is not None:
            parameters.extend(_query_parameters(route.query, components))
        if route.method == "POST":
            parameters.append(IDEMPOTENCY_KEY)
        if parameters:
            operation["parameters"] = parameters
        responses = dict(route.responses)
        if route.body is not None:
            # A body whose fields are all optional may be left out (it reads as ``{}``).
            body_schema = components.get(route.body.__name__, {})
            operation["requestBody"] = {
                "required": bool(body_schema.get("required")),
                "content": {"application/json": {"schema": schema_of[route.body]}},
            }
            responses.setdefault(413, None)
        if route.path.startswith("/api/") and (route.query or route.body):
            responses.setdefault(400, None)
        access = route.effective_access
        if access is Access.PUBLIC:
            operation["security"] = []  # no token; the Host/Origin checks still apply (403)
        else:
            responses.setdefault(401, None)
            if access is Access.AGENT:
                operation["x-metawsm-access"] = "operator or agent (an agent acts only for itself)"
            else:
                operation["x-metawsm-access"] = "operator"
        responses.setdefault(403, None)
        if route.method != "GET":
            responses.setdefault(415, None)
        if route.method == "POST":
            responses.setdefault(409, None)  # idempotency_key_reused
            responses.setdefault(503, None)  # the request with the same key is still in progress
        for status, kind in sorted(responses.items()):
            operation["responses"][str(status)] = _response(status, kind, schema_of)
        paths.setdefault(path, {})[route.method.lower()] = operation
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "metawsm daemon API",
            "version": __version__,
            "description": (
                "Forum, runs and actor inspection of `metawsm serve`. Errors are "
                '`{"error": {"code", "message"}}`; writes answer 200 with the projected thread, or 202 '
                "when the command is durable but not yet applied."
            ),
        },
        "servers": [{"url": "http://127.0.0.1:3001"}],
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {
            "token": {"type": "http", "scheme": "bearer",
                      "description": "The operator token (.metawsm/token next to the database) or an agent's "
                                     "token (METAWSM_TOKEN in its session). The web UI uses a session cookie."},
        }},
        "security": [{"token": []}],
    }
    return msgspec.json.encode(document)


# Every write takes it (docs/api.md, "Retries and idempotency keys").
IDEMPOTENCY_KEY = {
    "name": HEADER, "in": "header", "required": False, "schema": KEY_SCHEMA,
    "description": "Makes the write safe to retry: a later request with the same key and the same method, path "
                   "and body is answered what the first was answered and writes nothing; the same key with "
                   "another request is refused with 409 idempotency_key_reused. Keys are kept at least "
                   "api.idempotency_ttl_hours (24 h).",
}


def _ecma_patterns(node: Any) -> None:
    """Spell every ``pattern`` the ECMA way, as OpenAPI reads it (metawsm.text uses ``\\Z``)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                node[key] = ecma_pattern(value)
            else:
                _ecma_patterns(value)
    elif isinstance(node, list):
        for item in node:
            _ecma_patterns(item)


def _response(status: int, kind: Any, schema_of: dict[Any, Any]) -> dict[str, Any]:
    descriptions = {101: "Switching to the WebSocket protocol", 200: "OK", 202: "Accepted: durable, applies later",
                    400: "Bad request", 401: "No token, or a token that is not valid",
                    403: "Refused: foreign Host or Origin, or not allowed for this token", 404: "Not found",
                    409: "Conflict (or an Idempotency-Key reused with another request)",
                    410: "Gone: what the request needs no longer exists", 413: "Body too large (over 1 MiB)",
                    415: "Writes need Content-Type: application/json",
                    503: "Unavailable (the pipeline cannot take the request right now)"}
    entry: dict[str, Any] = {"description": descriptions.get(status, "Response")}
    if _members(kind):
        entry["content"] = {"application/json": {"schema": schema_of[kind]}}
    elif kind in ("text/plain", "text/html", "application/json"):
        entry["content"] = {kind: {"schema": {"type": "string"} if kind != "application/json" else {"type": "object"}}}
    elif kind is None and status >= 400:
        entry["content"] = {"application/json": {"schema": {"$ref": REF.format(name="ErrorResponse")}}}
    return entry


def _query_parameters(kind: type, components: dict[str, Any]) -> list[dict[str, Any]]:
    (schema,), extra = msgspec.json.schema_components([kind], ref_template=REF)
    components.update(extra)
    resolved = components.get(kind.__name__, schema)
    required = set(resolved.get("required", ()))
    parameters = []
    for name, prop in resolved.get("properties", {}).items():
        prop = _strip_null(prop)
        if name not in required and "enum" in prop:
            # An empty optional filter means "any", as if it were absent (``?state=``).
            prop = {**prop, "enum": [*prop["enum"], ""]}
        parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop})
    return parameters


def _strip_null(schema: dict[str, Any]) -> dict[str, Any]:
    """Query parameters are absent rather than null: drop the null branch of optionals."""
    options = schema.get("anyOf")
    if options:
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1:
            merged = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            merged.update(kept[0])
            if "default" in schema and schema["default"] is not None:
                merged["default"] = schema["default"]
            return merged
    return {k: v for k, v in schema.items() if not (k == "default" and v is None)}


def _operation_id(method: str, path: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", path.replace("/api/v1/", "")) if w]
    return method.lower() + "".join(w.capitalize() for w in words) or "index"
