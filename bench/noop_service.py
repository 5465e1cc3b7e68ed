"""The bench's queue service: the real microservice app, with a no-op task endpoint in front.

`POST <task path>` answers at once with a result of the real shape
(`{"company_id", "score", "band"}`; the score is computed from the item when it carries
the scoring attributes — pure arithmetic, no I/O — else a constant), without reading
the body's signature or touching any table. Every other path (the reduce part and
finalize pushes, `/healthz`) goes to the real app, so the reduce is the real one.

Run with uvicorn (`bench.noop_service:app`) in the queue service's environment.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from tests.declared import CREDIT_SCORES

TASK_PATH = CREDIT_SCORES.task_path
_HEADERS = [(b"content-type", b"application/json")]


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


def __getattr__(name: str) -> Any:
    # Built on first access (uvicorn's `bench.noop_service:app`), from the environment's settings.
    if name == "app":
        from microservice.main import create_app

        globals()["app"] = wrap(create_app())
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
