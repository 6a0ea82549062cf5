"""The listening socket, with JSON answers even to requests aiohttp cannot parse.

aiohttp answers a request it cannot parse (a request line or header over its limits, a
malformed request line) before any middleware sees it, in plain text, and there is no
hook for that answer (aio-libs/aiohttp#3287). Its connection protocol's ``handle_error``
writes it, so this module serves with a protocol that writes it as JSON.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)

from orderstream.http.encoding import error_response

log = logging.getLogger(__name__)

# No access log: a flash sale would flood it; /metrics counts what matters.
_HANDLER_OPTIONS: dict[str, Any] = {"access_log": None}


class JsonErrorRequestHandler(web.RequestHandler):
    """aiohttp's HTTP/1 protocol, whose own error answers are JSON too."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:  # the server's fault
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            reason = "internal error"
        else:
            # A client's malformed request: worth a line, not a traceback.
            log.info("refused a malformed request from %s: %r", request.remote, exc)
            reason = _reason(exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun; no error can be sent now")
        response = error_response(status, reason)
        response.force_close()
        return response


def _reason(exc: BaseException | None) -> str:
    # Never the message itself: aiohttp quotes the client's bytes in it.
    if isinstance(exc, LineTooLong):
        return "request line or header too long"
    if isinstance(exc, BadHttpMethod):
        return "unknown HTTP method"
    if isinstance(exc, BadStatusLine | InvalidURLError):
        return "malformed request line"
    if isinstance(exc, InvalidHeader):
        return "malformed header"
    if isinstance(exc, HttpProcessingError):
        return "malformed HTTP request"
    return "bad request"


async def listen(
    runner: web.AppRunner, host: str, port: int, *, reuse_port: bool = False
) -> asyncio.Server:
    """Serve the set-up ``runner``'s application on ``host:port``; close the result to stop.

    ``reuse_port``: share the port with the other processes that listen on it with the
    option (SO_REUSEPORT); the kernel spreads new connections over them. Only set when
    several processes serve: a single one keeps "address already in use" for a port
    another program holds.
    """
    server = runner.server
    if server is None:
        raise RuntimeError("set the runner up before listening")
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: JsonErrorRequestHandler(server, loop=loop, **_HANDLER_OPTIONS),
        host,
        port,
        reuse_port=reuse_port or None,
    )
