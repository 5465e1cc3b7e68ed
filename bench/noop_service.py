"""The bench's queue service: the real microservice app, with a no-op task endpoint in front.

`POST <task path>` answers at once with a result of the real shape
(`{"company_id", "score", "band"}`; the score is computed from the item when it carries
the scoring attributes — pure arithmetic, no I/O — else a constant), without reading
the body's signature or touching any table. Every other path (the reduce part and
finalize pushes, `/healthz`) goes to the real app, so the reduce is the real one.

With `BENCH_ADMISSION_SLOTS=K` in its environment (P7 measured, `bench.adaptive_local`) the
task endpoint admits only K pushes at once (`admit`): a push above K is answered 429 with
`Retry-After: 1` at once, an admitted one takes `BENCH_SERVICE_MS` (default 50) ms before
its answer; `GET /_admission` gives the counts, `POST /_admission/reset` zeroes them, and
`POST /_admission/shed` with `{"seconds": S, "retry_after": R}` makes it shed load for S
seconds: every task push is answered 503 `Retry-After: R` meanwhile (P9's shedding, `bench.fair_share_local`).

Run with uvicorn (`bench.noop_service:app`) in the queue service's environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from tests.declared import CREDIT_SCORES

TASK_PATH = CREDIT_SCORES.task_path
_HEADERS = [(b"content-type", b"application/json")]
#: The environment of the bench's service process that turns the admission on (P7 measured).
SLOTS_ENV = "BENCH_ADMISSION_SLOTS"
SERVICE_MS_ENV = "BENCH_SERVICE_MS"
ADMISSION_PATH = "/_admission"
SHED_PATH = "/_admission/shed"


def noop_result(body: bytes) -> bytes:
    """The task result for one pushed task body."""
    from microservice.domain import SCORING_FIELDS, credit_score

    try:
        item = json.loads(body).get("item") or {}
    except (ValueError, AttributeError):
        item = {}
    company_id = str(item.get("company_id", "")) if isinstance(item, dict) else ""
    score, band = 500, "C"
    if isinstance(item, dict) and all(item.get(f) is not None for f in SCORING_FIELDS):
        with contextlib.suppress(ValueError):
            score, band = credit_score(item)
    return json.dumps({"company_id": company_id, "score": score, "band": band}).encode()


def wrap(real_app: Any, task_path: str = TASK_PATH) -> Any:
    """An ASGI app answering `POST task_path` itself and passing everything else to `real_app`."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == task_path:
            chunks = []
            more = True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": noop_result(b"".join(chunks))})
            return
        await real_app(scope, receive, send)

    return app


@dataclass
class AdmissionCounts:
    """What the admission saw: pushes admitted, pushes answered 429, the most served at once."""

    admitted: int = 0
    rejected: int = 0
    in_flight: int = 0
    peak: int = 0
    shed: int = 0  # pushes answered 503 while shedding
    shed_until: float = 0.0  # epoch s
    shed_retry_after: int = 0
    last_shed_push: float = 0.0  # epoch s of the last push answered 503
    first_after_shed: float = 0.0  # epoch s of the first push admitted after the shedding ended


def admit(app: Any, slots: int, *, service_s: float = 0.05, task_path: str = TASK_PATH) -> Any:
    """An ASGI app letting at most `slots` `POST task_path` requests into `app` at once.

    Non-blocking: a push arriving while `slots` are being served is answered 429 with
    `Retry-After: 1` and a JSON body at once (after reading its body); an admitted one waits
    `service_s` (the service's time per push) and then goes to `app`. Counts in the returned
    app's `counts`; `GET /_admission` answers them as JSON, `POST /_admission/reset` zeroes them.
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    counts = AdmissionCounts()
    rejected_body = json.dumps({"error": "too many requests", "slots": slots}).encode()
    retry_headers = [*_HEADERS, (b"retry-after", b"1")]

    async def reply(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = _HEADERS) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def drain(receive: Any) -> None:
        more = True
        while more:  # drain the body, so that the connection stays usable
            more = (await receive()).get("more_body", False)

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == SHED_PATH and scope["method"] == "POST":
            chunks, more = [], True
            while more:
                message = await receive()
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            ask = json.loads(b"".join(chunks) or b"{}")
            counts.shed_until = time.time() + float(ask.get("seconds", 0))
            counts.shed_retry_after = int(ask.get("retry_after", 120))
            counts.first_after_shed = 0.0
            await reply(send, 200, json.dumps(asdict(counts)).encode())
            return
        if scope["type"] == "http" and scope["path"] == ADMISSION_PATH:
            if scope["method"] == "POST":
                counts.admitted = counts.rejected = counts.peak = counts.shed = 0
            await reply(send, 200, json.dumps({**asdict(counts), "slots": slots, "service_s": service_s}).encode())
            return
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == task_path):
            await app(scope, receive, send)
            return
        now = time.time()
        if now < counts.shed_until:
            counts.shed += 1
            counts.last_shed_push = now
            await drain(receive)
            headers = [*_HEADERS, (b"retry-after", str(counts.shed_retry_after).encode())]
            await reply(send, 503, b'{"error": "shedding load"}', headers)
            return
        if counts.in_flight >= slots:  # one event loop: the check and the increment are not interleaved
            counts.rejected += 1
            await drain(receive)
            await reply(send, 429, rejected_body, retry_headers)
            return
        if counts.shed_until and not counts.first_after_shed:
            counts.first_after_shed = now
        counts.in_flight += 1
        counts.admitted += 1
        counts.peak = max(counts.peak, counts.in_flight)
        try:
            if service_s > 0:
                await asyncio.sleep(service_s)
            await app(scope, receive, send)
        finally:
            counts.in_flight -= 1

    wrapped.counts = counts  # type: ignore[attr-defined]
    return wrapped


def from_env(app: Any, env: dict[str, str] | None = None) -> Any:
    """`app` behind the admission when `BENCH_ADMISSION_SLOTS` is set, else `app` itself."""
    env = dict(os.environ) if env is None else env
    if not env.get(SLOTS_ENV):
        return app
    return admit(app, int(env[SLOTS_ENV]), service_s=float(env.get(SERVICE_MS_ENV) or 50) / 1000)


def __getattr__(name: str) -> Any:
    # Built on first access (uvicorn's `bench.noop_service:app`), from the environment's settings.
    if name == "app":
        from microservice.main import create_app

        globals()["app"] = from_env(wrap(create_app()))
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
