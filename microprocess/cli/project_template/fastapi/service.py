"""The counter service: one signed task endpoint, `POST /tasks/count-words` (FastAPI + the
microprocess service SDK, which checks each push's signature, body and Idempotency-Key).

`microprocess local up` runs it (`local_app = "service:app"` in microprocess.toml) with
`SIGNING_SECRET_ARN` in its environment; anywhere else set `SIGNING_SECRET` (the value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import FastAPI
from pydantic import BaseModel, Field

from microprocess.service import PermanentFailure, TaskRequest, Verifier, secret_from_environment
from microprocess.service.fastapi_routes import task_router


class Text(BaseModel):
    id: str = Field(min_length=1, max_length=64)
    text: str = Field(max_length=100_000)


def count_words(task: TaskRequest[Text]) -> dict[str, object]:
    """One item's result (retries of the same task give the same answer)."""
    words = task.item.text.split()
    if not words:
        raise PermanentFailure(f"text {task.item.id} is empty: nothing to count")
    return {"id": task.item.id, "words": len(words)}


def create_app(secrets: Callable[[], str | Sequence[str]] | None = None) -> FastAPI:
    app = FastAPI(title="counter", docs_url=None, redoc_url=None, openapi_url=None)
    verifier = Verifier(secrets or secret_from_environment())
    app.include_router(task_router("/tasks/count-words", count_words, verifier=verifier, model=TaskRequest[Text]))
    app.add_api_route("/healthz", lambda: {"status": "ok"}, methods=["GET"])
    return app


app = create_app()
