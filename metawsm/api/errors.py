"""The one error shape of the API: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import msgspec
from aiohttp import web


class ErrorBody(msgspec.Struct, frozen=True):
    code: str
    message: str


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorBody


class ApiError(Exception):
    """Raised by handlers; the error middleware turns it into the JSON error response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


_encoder = msgspec.json.Encoder()


def error_body(code: str, message: str) -> bytes:
    """The bytes of an error answer (what an idempotent retry of a refused request repeats)."""
    return _encoder.encode(ErrorResponse(ErrorBody(code=code, message=message)))


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, body=error_body(code, message), content_type="application/json")
