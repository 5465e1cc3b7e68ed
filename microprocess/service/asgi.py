"""Plain ASGI pieces for any framework (Starlette, FastAPI, Quart, Litestar, raw ASGI servers).

* `BodyLimit`: middleware that answers 413 to a body over the contract's limit *before* the
  body is read: a declared `Content-Length` over the limit is refused at once, and a body
  without one (chunked) is counted as it streams and refused when it passes the limit.
* `TaskApp`: a complete ASGI app serving task endpoints: size limit, signature, parsing,
  kind and Idempotency-Key checks, then the handler; `PermanentFailure` and `RetryLater`
  become their answers. Standard library only (plus pydantic for the models).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from microprocess.service.signing import MAX_BODY_BYTES
from microprocess.service.tasks import (
    Answer,
    Rejected,
    TaskRequest,
    Verifier,
    error_answer,
    parse_task,
    result_body,
)

log = logging.getLogger(__name__)

#: The longest a service waits for a request's body once its headers passed, seconds: a client
#: trickling a body holds a connection no longer (408, which the forwarder retries).
BODY_READ_TIMEOUT_S = 30.0
#: ASCII digits only (`str.isdigit` would take "²"), and few enough that `int()` is cheap.
CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised by the counting `receive` when the streamed body passes the limit."""


async def send_answer(send: Send, answer: Answer) -> None:
    body = answer.encoded()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int, what: str) -> Answer:
    return Rejected(
        413, "body_too_large", f"{what}; the contract's limit is {limit} bytes: send large items by reference"
    ).answer


class BodyLimit:
    """ASGI middleware: 413 for request bodies over `max_bytes`, decided before they are read.

    Args:
        app: the wrapped ASGI app.
        max_bytes: the largest body accepted (the contract's `MAX_BODY_BYTES` by default).
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-length"), None)
        if declared is not None:
            text = declared.decode("latin-1").strip()
            if not CONTENT_LENGTH.fullmatch(text):
                await send_answer(send, Rejected(400, "bad_content_length", "Content-Length is not a number").answer)
                return
            if int(text) > self.max_bytes:
                await send_answer(send, _too_large(self.max_bytes, f"Content-Length is {text} bytes"))
                return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await send_answer(send, _too_large(self.max_bytes, f"the body passed {self.max_bytes} bytes"))


def body_too_slow(timeout_s: float) -> Rejected:
    return Rejected(408, "body_too_slow", f"the body did not arrive within {timeout_s:g} s; send it again")


async def read_body(receive: Receive, timeout_s: float = BODY_READ_TIMEOUT_S) -> bytes:
    """The whole body; `Rejected` (408) when it takes longer than `timeout_s`."""

    async def read() -> bytes:
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("the client went away before sending the whole body")
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise body_too_slow(timeout_s) from None


Handler = Callable[[Any], Any]


@dataclass(frozen=True)
class TaskRoute:
    """One task endpoint: `path`, the `handler` (sync or async, takes the parsed request,
    returns the JSON-ready result or a pydantic model), the `kind` it takes, and its `model`."""

    path: str
    handler: Handler
    kind: str = "task"
    model: type[BaseModel] = TaskRequest[Any]


async def call_handler(handler: Handler, request: Any) -> Any:
    if inspect.iscoroutinefunction(handler):
        return await handler(request)
    return await asyncio.to_thread(handler, request)


class TaskApp:
    """A plain ASGI app serving signed task endpoints (POST only); 404 for any other path.

    Args:
        routes: the endpoints.
        verifier: the service's signature check (secrets, window, replay guard).
        max_body_bytes: larger bodies get 413 before they are read.
        body_timeout_s: a body slower than this gets 408 (the signature headers are checked
            before any of it is read).
    """

    def __init__(
        self,
        routes: list[TaskRoute],
        verifier: Verifier,
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
        body_timeout_s: float = BODY_READ_TIMEOUT_S,
    ) -> None:
        self.routes = {r.path: r for r in routes}
        self.verifier = verifier
        self.body_timeout_s = body_timeout_s
        self._app = BodyLimit(self._serve, max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # nothing to start or stop
            await receive()
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self._app(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"])
        if route is None:
            await send_answer(send, Answer(404, {"error": "not_found", "message": f"no endpoint {scope['path']}"}))
            return
        if scope["method"] != "POST":
            await send_answer(send, Answer(405, {"error": "method_not_allowed", "message": "POST only"}))
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            self.verifier.precheck(headers, "POST", scope["path"])  # before the body is read
            raw = await read_body(receive, self.body_timeout_s)
            key = self.verifier.check(headers, raw, "POST", scope["path"])
            request = parse_task(raw, route.model, kind=route.kind, key=key)
            answer = Answer(200, result_body(await call_handler(route.handler, request)))
        except Exception as exc:
            known = error_answer(exc)
            if known is None:
                log.exception("handler of %s failed", scope["path"])
                known = Answer(500, {"error": "internal_error", "message": f"{type(exc).__name__}"})
            answer = known
        await send_answer(send, answer)
