"""WRONG ON PURPOSE: verifies signatures properly, then parses the body unguarded (500 on non-JSON)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from microprocess.service import ReplayGuard, SignatureError, verify
from microprocess.service.asgi import BodyLimit


def create_app(secret: str) -> FastAPI:
    app = FastAPI()
    guard = ReplayGuard()

    @app.post("/tasks/remind")
    async def remind(request: Request) -> Any:
        raw = await request.body()
        try:
            verify(request.headers, raw, request.method, request.url.path, secret, replay_guard=guard)
        except SignatureError as exc:
            return JSONResponse({"error": "bad_signature", "message": str(exc)}, status_code=401)
        task = json.loads(raw)  # the bug: a malformed body raises, and the server answers 500
        if task.get("kind") != "task":
            return JSONResponse({"error": "wrong_kind", "message": "not a task"}, status_code=400)
        return {"invoice_id": task["item"]["invoice_id"], "reminded": True, "channel": "email", "days_overdue": 3}

    app.add_middleware(BodyLimit)
    return app
