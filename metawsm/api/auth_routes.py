"""``GET /api/v1/auth`` (how to authenticate) and ``POST /api/v1/auth/rotate`` (new operator token).

``GET /api/v1/auth`` needs no token: it tells a client whether tokens are on and where the
operator token file is, so the CLI run by the daemon's user finds the token by itself.  The
path is not a secret (the file is readable by its owner only), and a page on another origin
cannot read the answer (no CORS headers, see ``api/security.py``).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Literal

import msgspec
from aiohttp import web

from metawsm.api.auth import AUTH
from metawsm.api.codec import json_response
from metawsm.api.errors import ApiError, ErrorResponse
from metawsm.api.registry import Access, Route
from metawsm.auth import token_file

log = logging.getLogger("metawsm.api")


class AuthInfo(msgspec.Struct, kw_only=True):
    auth: Literal["token", "off"]
    token_file: str = ""  # empty when the token came from METAWSM_TOKEN (or auth is off)


class RotateResponse(msgspec.Struct, kw_only=True):
    rotated: bool
    token_file: str


async def auth_info(request: web.Request) -> web.Response:
    settings = request.app[AUTH]
    return json_response(AuthInfo(auth="token" if settings.enabled else "off", token_file=settings.token_file))


async def rotate(request: web.Request) -> web.Response:
    settings = request.app[AUTH]
    if settings.tokens is None:
        raise ApiError(409, "auth_off", "tokens are off (serve --no-auth): there is no token to rotate")
    if not settings.token_file:
        raise ApiError(409, "token_from_environment",
                       "the operator token comes from METAWSM_TOKEN; change it there and restart metawsm serve")
    path = Path(settings.token_file)
    try:
        new = await asyncio.get_running_loop().run_in_executor(None, token_file.replace, path)
    except token_file.TokenFileError as error:
        raise ApiError(500, "token_file_error", str(error)) from None
    settings.tokens.replace_operator_token(new)
    log.info("operator token rotated (new token in %s); UI sessions must log in again", path)
    return json_response(RotateResponse(rotated=True, token_file=str(path)))


def routes() -> list[Route]:
    return [
        Route("GET", "/api/v1/auth", auth_info, "Whether tokens are on, and where the operator token file is",
              "system", responses={200: AuthInfo}, access=Access.PUBLIC),
        Route("POST", "/api/v1/auth/rotate", rotate, "Replace the operator token", "system",
              responses={200: RotateResponse, 409: ErrorResponse}),
    ]
