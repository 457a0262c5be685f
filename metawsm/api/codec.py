"""Strict request decoding and JSON responses."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from metawsm.api.errors import ApiError
from metawsm.text import describe_violation

T = TypeVar("T")
MAX_BODY_BYTES = 1024 * 1024
# How deep objects and arrays may nest in a request body, the body itself counting as one
# (docs/api.md).  No request of the API needs more than four; the decoder recurses once per level,
# and a body nested a thousand deep would exhaust the handler's stack (RecursionError, a 500).
MAX_NESTING = 32

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")

_encoder = msgspec.json.Encoder()
_decoders: dict[type, msgspec.json.Decoder[Any]] = {}


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_encoder.encode(payload), content_type="application/json")


def encode(payload: Any) -> bytes:
    return _encoder.encode(payload)


async def read_body(request: web.Request, kind: type[T]) -> T:
    """Decode the JSON body into ``kind``; unknown fields, wrong types → 400 ``invalid_json``."""
    raw = await request.read()
    if not raw.strip():
        raw = b"{}"
    if _nests_too_deep(raw):
        raise ApiError(400, "invalid_json", f"request body nests objects and arrays more than {MAX_NESTING} deep")
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        text = describe_violation(str(error)) or _readable(str(error))
        raise ApiError(400, "invalid_json", f"invalid request body: {text}") from None
    except RecursionError:  # the depth check above keeps this from happening; never a 500 if it did
        raise ApiError(400, "invalid_json", f"request body nests objects and arrays more than {MAX_NESTING} deep"
                       ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        # msgspec <0.23 raised UnicodeDecodeError for bad UTF-8 in a string, 0.23 raises a
        # DecodeError; either way the body is checked again only on this (rare) error path,
        # so a valid request pays nothing for the precise message.
        raise _decode_failure(raw, error) from None


def _nests_too_deep(raw: bytes) -> bool:
    """Whether the JSON text nests objects and arrays deeper than :data:`MAX_NESTING`.

    A body with fewer brackets than that cannot, so the usual request pays two ``count`` calls;
    otherwise strings are blanked (brackets inside them do not nest) and the rest is walked.
    Malformed JSON may be miscounted: the decoder refuses it either way.
    """
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:
        return False
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub(b'""', raw)):
        depth += 1 if bracket in b"[{" else -1
        if depth > MAX_NESTING:
            return True
    return False


def _decode_failure(raw: bytes, error: Exception) -> ApiError:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return ApiError(400, "invalid_json", f"request body is not valid UTF-8: {bad.reason} at byte {bad.start}")
    return ApiError(400, "invalid_json", f"request body is not valid JSON: {error}")


def parse_query(request: web.Request, kind: type[T]) -> T:
    """Convert query parameters into ``kind`` (strings coerced to ints/bools); bad → 400."""
    values: dict[str, Any] = {}
    fields = set(getattr(kind, "__struct_fields__", ()))
    for key, value in request.query.items():
        if key in fields:
            values[key] = value
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as error:
        text = _readable(str(error))
        code = "invalid_limit" if "limit" in text else "invalid_cursor" if "cursor" in text else "invalid_filter"
        raise ApiError(400, code, f"invalid query parameter: {text}") from None


def _readable(text: str) -> str:
    """msgspec says ``... - at `$.priority```; make the path plain (``at priority``)."""
    return text.replace("`$.", "`").replace("`$`", "the body").replace("`", "")
