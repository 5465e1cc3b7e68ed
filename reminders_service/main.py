"""Invoice reminders: one signed task endpoint, `POST /tasks/remind`, built on the service SDK.

Run: `SIGNING_SECRET=... .venv/bin/uvicorn reminders_service.main:app --port 8083`. The secret
comes from SIGNING_SECRET, else from the Secrets Manager secret SIGNING_SECRET_ARN (read on
the first task, re-read when a signature does not match: rotation).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from fastapi import FastAPI
from pydantic import BaseModel, Field

from microprocess.service import PermanentFailure, TaskRequest, secret_from_environment
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


def create_app() -> FastAPI:
    app = FastAPI(title="reminders-queue: invoice reminders")
    app.include_router(
        task_router("/tasks/remind", remind, secrets=secret_from_environment(), model=TaskRequest[Invoice])
    )
    app.add_api_route("/healthz", lambda: {"status": "ok", "service": "reminders-queue"}, methods=["GET"])
    return app


app = create_app()
