"""FastAPI adapters of the push contract (FastAPI is imported only by services that use this module).

* `task_router(path, handler, secrets=...)`: an `APIRouter` with one signed task endpoint,
  self-contained (no app-level setup).
* `signed_task(model, kind=..., verifier=...)`: a dependency for routes that need their own
  dependencies too; a refused request raises `RefusedRequest` (an `HTTPException` with the
  contract's status, so an app without handlers still answers 401, never 500); call
  `install_contract_errors(app)` once for the flat `{error, message}` body and for the
  handler's `PermanentFailure` / `RetryLater`.

Both read the body through `read_limited` (413 before a large body is read), verify the
signature on the raw bytes, then parse; see `microprocess.service.tasks` for the order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from microprocess.service.asgi import BODY_READ_TIMEOUT_S, CONTENT_LENGTH, Handler, body_too_slow, call_handler
from microprocess.service.signing import MAX_BODY_BYTES, parse_secrets, require_strong
from microprocess.service.tasks import (
    Answer,
    PermanentFailure,
    Rejected,
    RetryLater,
    TaskRequest,
    Verifier,
    error_answer,
    parse_task,
    result_body,
)

M = TypeVar("M", bound=BaseModel)


def as_response(answer: Answer) -> Response:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


async def read_limited(
    request: Request,
    max_bytes: int = MAX_BODY_BYTES,
    *,
    verifier: Verifier | None = None,
    timeout_s: float = BODY_READ_TIMEOUT_S,
) -> bytes:
    """The raw body, or `Rejected`: 413 as soon as it is known to pass `max_bytes` (from
    `Content-Length` before reading, else while counting the streamed chunks); 401 when
    `verifier` finds the signature headers wrong, before any of the body is read; 408 when the
    body takes longer than `timeout_s`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not CONTENT_LENGTH.fullmatch(declared.strip()):
            raise Rejected(400, "bad_content_length", "Content-Length is not a number")
        if int(declared) > max_bytes:
            raise Rejected(413, "body_too_large", f"Content-Length is {declared} bytes; the limit is {max_bytes}")
    if verifier is not None:
        verifier.precheck(request.headers, request.method, request.url.path)

    async def read() -> bytes:
        chunks: list[bytes] = []
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > max_bytes:
                raise Rejected(413, "body_too_large", f"the body passed {max_bytes} bytes, the contract's limit")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        raise body_too_slow(timeout_s) from None


def _verifier(verifier: Verifier | Callable[[], Verifier]) -> Callable[[], Verifier]:
    return (lambda: verifier) if isinstance(verifier, Verifier) else verifier


class RefusedRequest(HTTPException):
    """A `Rejected` as FastAPI answers it with no handler installed: its status (401, 400, 413,
    ...), never a 500; `{"detail": {"error", "message"}}`, or the contract's flat
    `{"error", "message"}` once `install_contract_errors(app)` is called."""

    def __init__(self, refused: Rejected) -> None:
        super().__init__(refused.answer.status, detail=refused.answer.body, headers=refused.answer.headers or None)
        self.answer = refused.answer


def signed_task(
    model: type[M],
    *,
    kind: str = "task",
    verifier: Verifier | Callable[[], Verifier],
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Callable[[Request], Awaitable[M]]:
    """A dependency: the verified, parsed request body as `model`; a refused request raises
    `RefusedRequest` (an `HTTPException`: its own status even in an app without
    `install_contract_errors`, which only flattens the body to `{"error", "message"}`).

    `verifier` may be a function (e.g. one built from the app's settings, cached).
    """
    get_verifier = _verifier(verifier)

    async def dependency(request: Request) -> M:
        try:
            verifier_now = get_verifier()
            raw = await read_limited(request, max_body_bytes, verifier=verifier_now)
            # The secrets getter may call Secrets Manager once (blocking): keep it off the event loop.
            key = await run_in_threadpool(verifier_now.check, request.headers, raw, request.method, request.url.path)
            return parse_task(raw, model, kind=kind, key=key)
        except Rejected as refused:
            raise RefusedRequest(refused) from None

    return dependency


async def _contract_error(_: Request, exc: Exception) -> Response:
    answer = exc.answer if isinstance(exc, RefusedRequest) else error_answer(exc)
    assert answer is not None
    return as_response(answer)


def install_contract_errors(app: FastAPI) -> None:
    """Answer `Rejected` (and `RefusedRequest`), `PermanentFailure` and `RetryLater` as the
    contract says (JSON `{error, message}`)."""
    for exc in (Rejected, RefusedRequest, PermanentFailure, RetryLater):
        app.add_exception_handler(exc, _contract_error)


def task_router(
    path: str,
    handler: Handler,
    *,
    secrets: Callable[[], str | Sequence[str]] | str | Sequence[str] | None = None,
    verifier: Verifier | None = None,
    kind: str = "task",
    model: type[BaseModel] = TaskRequest[Any],
    max_body_bytes: int = MAX_BODY_BYTES,
    **route_options: Any,
) -> APIRouter:
    """A router with one signed endpoint `POST path` calling `handler(request)`.

    Args:
        handler: sync or async; takes the parsed `model`; returns the task result (JSON-ready
            data or a pydantic model); raises `PermanentFailure` / `RetryLater`.
        secrets: the secret value (or a function returning it, called per request: cache it).
        verifier: instead of `secrets`, a ready `Verifier` (window, replay guard).
        kind: the kind this route takes (`task`, `reduce-part`, `finalize`, `completion`).
        model: the request model, e.g. `TaskRequest[MyItem]`.
    """
    if verifier is None:
        if secrets is None:
            raise ValueError("task_router needs secrets= (the signing secret or a function returning it) or verifier=")
        if not callable(secrets):
            require_strong(parse_secrets(secrets))  # a short secret is refused here, at start-up
        getter = secrets if callable(secrets) else (lambda: secrets)  # type: ignore[return-value]
        verifier = Verifier(getter)
    ready = verifier
    router = APIRouter()

    async def endpoint(request: Request) -> Response:
        try:
            raw = await read_limited(request, max_body_bytes, verifier=ready)
            key = await run_in_threadpool(ready.check, request.headers, raw, request.method, request.url.path)
            task = parse_task(raw, model, kind=kind, key=key)
            return as_response(Answer(200, result_body(await call_handler(handler, task))))
        except (Rejected, PermanentFailure, RetryLater) as exc:
            answer = error_answer(exc)
            assert answer is not None
            return as_response(answer)

    schema = model.model_json_schema()
    router.add_api_route(
        path,
        endpoint,
        methods=["POST"],
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}},
        responses={
            401: {"description": "bad, missing, stale, future-dated or replayed signature; nothing was done"},
            400: {"description": "permanent: not JSON, wrong kind or Idempotency-Key mismatch"},
            413: {"description": "permanent: the body is over the contract's limit"},
            422: {"description": "permanent: the body does not match the model, or the handler refused it"},
            503: {"description": "retry after Retry-After seconds"},
        },
        **route_options,
    )
    return router
