"""WRONG ON PURPOSE: a reminders service that never checks signatures (it does everything else)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from microprocess.service.asgi import BodyLimit


def create_app() -> FastAPI:
    app = FastAPI()

    @app.post("/tasks/remind")
    async def remind(request: Request) -> Any:
        try:
            task = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "malformed_body", "message": "not JSON"}, status_code=400)
        if task.get("kind") != "task":
            return JSONResponse({"error": "wrong_kind", "message": "not a task"}, status_code=400)
        return {"invoice_id": task["item"]["invoice_id"], "reminded": True, "channel": "email", "days_overdue": 3}

    app.add_middleware(BodyLimit)
    return app
