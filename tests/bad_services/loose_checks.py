"""WRONG ON PURPOSE: a reminders service that checks signatures, but loosely in one chosen way.

Each flaw is a mistake a team can make while writing its own check (docs/push-contract.md §3):

* `wide_windows`: accepts timestamps 300 s in the future and 599 s in the past (the contract:
  30 s and 300 s);
* `accepts_v1`: still accepts a version-1 signature (`v1=` HMAC of `<timestamp>.<body>`);
* `no_key_check`: never compares the Idempotency-Key with the body's `<run_id>:<task_id>`;
* `cached_signatures`: remembers signatures it verified and accepts them again without
  recomputing, keying its replay record by nonce: a valid signature with a swapped nonce passes;
* `no_replay_guard`: keeps no replay record (a warning, not a failure: idempotency makes a
  replay harmless).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from microprocess.service.asgi import BodyLimit
from microprocess.service.signing import signature, signature_base

FLAWS = ("wide_windows", "accepts_v1", "no_key_check", "cached_signatures", "no_replay_guard")


def create_app(secret: str, flaw: str) -> FastAPI:
    if flaw not in FLAWS:
        raise ValueError(f"flaw must be one of {FLAWS}")
    app = FastAPI()
    max_future, max_age = (300, 599) if flaw == "wide_windows" else (30, 300)
    verified: set[str] = set()
    seen: set[str] = set()

    def refuse(message: str) -> JSONResponse:
        return JSONResponse({"error": "bad_signature", "message": message}, status_code=401)

    @app.post("/tasks/remind")
    async def remind(request: Request) -> Any:
        raw = await request.body()
        h = request.headers
        ts, nonce, key, sig = (
            h.get(n, "")
            for n in ("x-microprocess-timestamp", "x-microprocess-nonce", "idempotency-key", "x-microprocess-signature")
        )
        if not (ts.isdigit() and len(ts) <= 12 and nonce and key and sig):
            return refuse("missing or malformed signature headers")
        age = time.time() - int(ts)
        if age > max_age or -age > max_future:
            return refuse("timestamp outside the window")
        if flaw == "accepts_v1" and sig.startswith("v1="):
            expected = "v1=" + hmac.new(secret.encode(), ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(expected, sig)
        elif flaw == "cached_signatures" and sig in verified:
            ok = True
        else:
            base = signature_base("POST", request.url.path, ts, nonce, key, raw)
            ok = hmac.compare_digest(signature(secret, base), sig)
        if not ok:
            return refuse("signature does not match")
        verified.add(sig)
        record = nonce if flaw == "cached_signatures" else sig
        if flaw != "no_replay_guard":
            if record in seen:
                return refuse("replayed")
            seen.add(record)
        try:
            task = json.loads(raw)
        except ValueError:
            return JSONResponse({"error": "malformed_body", "message": "not JSON"}, status_code=400)
        if not isinstance(task, dict) or task.get("kind") != "task":
            return JSONResponse({"error": "wrong_kind", "message": "not a task"}, status_code=400)
        if flaw != "no_key_check" and key != f"{task.get('run_id')}:{task.get('task_id')}":
            return JSONResponse({"error": "idempotency_key_mismatch", "message": "key"}, status_code=400)
        return {"invoice_id": task["item"]["invoice_id"], "reminded": True, "channel": "email", "days_overdue": 3}

    app.add_middleware(BodyLimit)
    return app
