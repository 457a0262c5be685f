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


def error_response(status: int, code: str, message: str) -> web.Response:
    body = _encoder.encode(ErrorResponse(ErrorBody(code=code, message=message)))
    return web.Response(status=status, body=body, content_type="application/json")
