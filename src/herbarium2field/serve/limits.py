"""A request-body size limit enforced while the body streams in, before anything parses it.

Starlette parses a multipart upload completely (spooling files to disk) before the endpoint can look at
the sizes, so a 2 GB upload would be accepted and stored. This ASGI middleware refuses a too-large
``Content-Length`` at once and counts the bytes of chunked uploads as they arrive, answering 413 as soon
as the limit is passed (whatever the inner app was about to answer).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies over ``limit`` bytes with ``413`` and a plain JSON message."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                too_big = False
            if too_big:
                await self._refuse(send)
                return
        state = {"received": 0, "over": False, "started": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["over"] = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                return  # the inner app's reply to the aborted body is replaced by our 413
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        with contextlib.suppress(_TooLarge):
            await self.app(scope, limited_receive, guarded_send)
        if state["over"] and not state["started"]:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        mb = self.limit / 1e6
        body = json.dumps(
            {"detail": f"the upload is too large: the limit is {mb:.0f} MB per request"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
