"""Strict request decoding and JSON responses."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from aiohttp import web

from metawsm.api.errors import ApiError

T = TypeVar("T")
MAX_BODY_BYTES = 1024 * 1024

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
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        raise ApiError(400, "invalid_json", f"invalid request body: {_readable(str(error))}") from None
    except msgspec.DecodeError as error:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:  # msgspec decodes strings itself and raises this as is
        raise ApiError(400, "invalid_json", f"request body is not valid UTF-8: {error.reason} at byte {error.start}") from None


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
