"""Invoice reminders: one signed task endpoint, `POST /tasks/remind`, built on the service SDK.

Run: `SIGNING_SECRET=... .venv/bin/uvicorn reminders_service.main:app --port 8083`. The secret
comes from SIGNING_SECRET, else from the Secrets Manager secret SIGNING_SECRET_ARN (read on
the first task, re-read when a signature does not match: rotation).
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime

from fastapi import FastAPI
from pydantic import BaseModel, Field

from microprocess.service import PermanentFailure, TaskRequest
from microprocess.service.fastapi_routes import task_router
from microprocess.service.rotation import CachedSecret


class Invoice(BaseModel):
    invoice_id: str = Field(min_length=1, max_length=64)
    customer: str = Field(min_length=1, max_length=256)
    amount: float = Field(gt=0, lt=1e12)
    due_date: date


def read_secret() -> str:
    if secret := os.environ.get("SIGNING_SECRET"):
        return secret
    if arn := os.environ.get("SIGNING_SECRET_ARN"):
        import boto3  # only when the secret lives in Secrets Manager

        return str(boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"])
    raise RuntimeError("set SIGNING_SECRET or SIGNING_SECRET_ARN to accept tasks")


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
        task_router("/tasks/remind", remind, secrets=CachedSecret(read_secret), model=TaskRequest[Invoice])
    )
    app.add_api_route("/healthz", lambda: {"status": "ok", "service": "reminders-queue"}, methods=["GET"])
    return app


app = create_app()
