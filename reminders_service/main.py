"""Invoice reminders: one signed task endpoint, `POST /tasks/remind`, built on the service SDK,
and the job's completion callback, `POST /runs/done` (each run's outcome kept once).

Run: `SIGNING_SECRET=... .venv/bin/uvicorn reminders_service.main:app --port 8083`. The secret
comes from SIGNING_SECRET, else from the Secrets Manager secret SIGNING_SECRET_ARN (read on
the first task, re-read every minute and when a signature does not match: rotation).

Nothing is served unauthenticated but `/healthz`: a run's recorded outcome,
`GET /runs/{run_id}/completion`, is signed like a push (method GET, empty body,
`Idempotency-Key: <run_id>:completion`), and there is no `/docs` or `/openapi.json`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from microprocess.service import (
    CompletionRequest,
    PermanentFailure,
    Rejected,
    TaskRequest,
    Verifier,
    secret_from_environment,
)
from microprocess.service.fastapi_routes import task_router


class Invoice(BaseModel):
    invoice_id: str = Field(min_length=1, max_length=64)
    customer: str = Field(min_length=1, max_length=256)
    amount: float = Field(gt=0, lt=1e12)
    due_date: date


def remind(task: TaskRequest[Invoice], today: date | None = None) -> dict[str, object]:
    """Remind the customer of one unpaid invoice (here: decide the channel; a real one would send it)."""
    days_overdue = ((today or datetime.now(UTC).date()) - task.item.due_date).days
    if days_overdue < 0:
        raise PermanentFailure(f"invoice {task.item.invoice_id} is due on {task.item.due_date}: not overdue")
    channel = "letter" if days_overdue > 60 else "email"
    return {"invoice_id": task.item.invoice_id, "reminded": True, "channel": channel, "days_overdue": days_overdue}


class Completions:
    """The runs' completion callbacks, kept once per run however often they are delivered (the
    callback is at least once); a real service would, say, close the billing period here."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, object]] = {}
        self.deliveries: dict[str, int] = {}

    def __call__(self, done: CompletionRequest) -> dict[str, object]:
        self.deliveries[done.run_id] = self.deliveries.get(done.run_id, 0) + 1
        self.runs.setdefault(done.run_id, done.model_dump())
        return {"run_id": done.run_id, "recorded": True}

    def get(self, run_id: str) -> dict[str, object]:
        if run_id not in self.runs:
            raise HTTPException(404, f"no completion of run {run_id!r} received")
        return {**self.runs[run_id], "deliveries": self.deliveries[run_id]}


def signed_get(verifier: Verifier) -> Callable[[Request, str], Awaitable[str]]:
    """A dependency: the run id of a GET signed like a push (empty body, key `<run_id>:completion`);
    401 unsigned or badly signed, 400 for a key that names another run."""

    async def dependency(request: Request, run_id: str) -> str:
        try:
            key = await run_in_threadpool(verifier.check, request.headers, b"", "GET", request.url.path)
        except Rejected as refused:
            raise HTTPException(refused.answer.status, refused.answer.body, refused.answer.headers or None) from None
        if key != f"{run_id}:completion":
            raise HTTPException(400, f"Idempotency-Key must be '{run_id}:completion' for this run, got {key!r}")
        return run_id

    return dependency


def create_app() -> FastAPI:
    # No /docs, /redoc or /openapi.json: the service's shape is not for anyone to read.
    app = FastAPI(title="reminders-queue: invoice reminders", docs_url=None, redoc_url=None, openapi_url=None)
    secrets = secret_from_environment()
    verifier = Verifier(secrets)
    completions = Completions()
    app.include_router(task_router("/tasks/remind", remind, verifier=verifier, model=TaskRequest[Invoice]))
    app.include_router(
        task_router("/runs/done", completions, verifier=verifier, kind="completion", model=CompletionRequest)
    )

    def completion_of(run_id: str = Depends(signed_get(verifier))) -> dict[str, object]:
        return completions.get(run_id)

    app.add_api_route("/runs/{run_id}/completion", completion_of, methods=["GET"])

    app.add_api_route("/healthz", lambda: {"status": "ok", "service": "reminders-queue"}, methods=["GET"])
    return app


app = create_app()
