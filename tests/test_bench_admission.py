"""The bench service's K-slot admission (P7 measured): 429 above K pushes in flight."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bench.noop_service import ADMISSION_PATH, SERVICE_MS_ENV, SLOTS_ENV, admit, from_env


async def real(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


async def call(app: Any, method: str, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path}, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def test_admits_k_at_once_and_answers_429_above() -> None:
    app = admit(real, 2, service_s=0.05, task_path="/tasks/x")

    async def burst() -> list[tuple[int, dict[bytes, bytes], bytes]]:
        return list(await asyncio.gather(*(call(app, "POST", "/tasks/x") for _ in range(5))))

    answers = asyncio.run(burst())
    statuses = sorted(a[0] for a in answers)
    assert statuses == [200, 200, 429, 429, 429]
    rejected = next(a for a in answers if a[0] == 429)
    assert rejected[1][b"retry-after"] == b"1" and json.loads(rejected[2])["slots"] == 2
    assert (app.counts.admitted, app.counts.rejected, app.counts.peak, app.counts.in_flight) == (2, 3, 2, 0)
    # once they are served, the slots are free again
    assert asyncio.run(call(app, "POST", "/tasks/x"))[0] == 200


def test_other_paths_pass_untouched_and_the_counts_are_read_and_reset() -> None:
    app = admit(real, 1, service_s=0.0, task_path="/tasks/x")
    assert asyncio.run(call(app, "POST", "/tasks/x/reduce-part"))[0] == 200
    assert asyncio.run(call(app, "GET", "/tasks/x"))[0] == 200
    asyncio.run(call(app, "POST", "/tasks/x"))
    status, _, body = asyncio.run(call(app, "GET", ADMISSION_PATH))
    assert status == 200 and json.loads(body) | {} == {
        "admitted": 1,
        "rejected": 0,
        "in_flight": 0,
        "peak": 1,
        "slots": 1,
        "service_s": 0.0,
        "shed": 0,
        "shed_until": 0.0,
        "shed_retry_after": 0,
        "last_shed_push": 0.0,
        "first_after_shed": 0.0,
    }
    asyncio.run(call(app, "POST", ADMISSION_PATH))
    assert app.counts.admitted == 0 and app.counts.peak == 0


def test_configured_from_the_environment() -> None:
    assert from_env(real, {}) is real
    app = from_env(real, {SLOTS_ENV: "3", SERVICE_MS_ENV: "20"})
    _, _, body = asyncio.run(call(app, "GET", ADMISSION_PATH))
    assert json.loads(body)["slots"] == 3 and json.loads(body)["service_s"] == 0.02
    with pytest.raises(ValueError):
        admit(real, 0)


def test_the_measured_rows_say_what_was_measured_and_whether_the_aim_was_met() -> None:
    from bench.adaptive_local import lines

    run = {"rejected_per_1000_items": 0.0, "wall_s": 30.0, "failed": 0, "caps": [8, 4, 2]}
    p7 = {
        "items": 4000,
        "slots": 30,
        "service_ms": 100.0,
        "max_concurrency": 8,
        "batch_size": 10,
        "interval_s": 3.0,
        "static": {**run, "rejected_per_1000_items": 564.2},
        "adaptive": {**run, "rejected_per_1000_items": 158.5, "wall_s": 31.2},
        "rejected_ratio": 3.56,
        "wall_time_ratio": 1.04,
        "aim_met": {"rejected": False, "wall_time": True},
    }
    rows = dict(lines(p7))
    assert "controller every 3 s" in rows["P7 measured"] and "AWS: a minute" in rows["P7 measured"]
    assert "3.56x fewer" in rows["P7 m. ratio"] and ">= 5x fewer MISSED" in rows["P7 m. ratio"]
    assert "<= 1.1x met" in rows["P7 m. ratio"]


def test_shedding_answers_503_with_the_retry_after_for_its_seconds_then_admits_again() -> None:
    import time

    from bench.noop_service import SHED_PATH

    app = admit(real, 2, service_s=0.0, task_path="/tasks/x")

    async def shed(seconds: float) -> tuple[int, dict[bytes, bytes], bytes]:
        sent: list[dict[str, Any]] = []
        body = json.dumps({"seconds": seconds, "retry_after": 120}).encode()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "method": "POST", "path": SHED_PATH}, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]

    assert asyncio.run(shed(0.3))[0] == 200
    status, headers, _ = asyncio.run(call(app, "POST", "/tasks/x"))
    assert status == 503 and headers[b"retry-after"] == b"120" and app.counts.shed == 1
    time.sleep(0.35)
    assert asyncio.run(call(app, "POST", "/tasks/x"))[0] == 200
    assert app.counts.first_after_shed >= app.counts.shed_until
