"""Fault injection for the chaos suite: configured, never coded into behaviour.

Active only when `MICROPROCESS_CHAOS` holds a JSON document or the path of one. The
service reads these keys (and ignores the functions' keys in the same document):

    {"seed": 7, "rate_503": 0.05, "rate_429": 0.05, "retry_after_s": 1,
     "rate_timeout": 0.02, "timeout_s": 10,
     "poison_ids": ["C0000013"], "bad_request_ids": ["C0000021"], "crash_ids": ["C0000017"],
     "shed_after_requests": 150, "shed_s": 60}

On the task path only (`POST /tasks/credit-score`), in this order:

* shedding: once `shed_after_requests` task requests have been served, the service sheds load
  for `shed_s` seconds: every task request then gets 503 with `Retry-After` the seconds left of
  the window (rounded up; `shed_retry_after_s` to fix it), as a service under maintenance says
  "not now" (the platform then pauses every job's pushes to it: docs/capacity.md);
* a crash company id kills the service process once its request is read (a poison item that
  takes the service down: the connection is cut without an answer; whoever supervises the
  service restarts it);
* a poison company id always gets 500, a bad-request id always 400;
* otherwise one draw from the seeded stream decides: 503 (with `Retry-After`), 429 (with
  `Retry-After`), or a sleep of `timeout_s` before the request is served normally (the
  forwarder, with a shorter timeout, sees a timeout), or nothing.

Exactly one draw is taken per task request, so a given sequence of requests always
meets the same faults. `GET /_chaos/stats` counts what was injected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from microprocess.chaos.faults import read_chaos_document
from microservice.errors import error_response

log = logging.getLogger(__name__)


class ChaosConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    seed: int = 0
    rate_503: float = Field(default=0.0, ge=0, le=1)
    rate_429: float = Field(default=0.0, ge=0, le=1)
    retry_after_s: int = Field(default=1, ge=0)
    rate_timeout: float = Field(default=0.0, ge=0, le=1)
    timeout_s: float = Field(default=10.0, ge=0, le=900)
    poison_ids: frozenset[str] = frozenset()
    bad_request_ids: frozenset[str] = frozenset()
    crash_ids: frozenset[str] = frozenset()
    shed_after_requests: int | None = Field(default=None, ge=0)
    shed_s: float = Field(default=0.0, ge=0, le=3600)
    shed_retry_after_s: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _rates(self) -> ChaosConfig:
        total = self.rate_503 + self.rate_429 + self.rate_timeout
        if total > 1:
            raise ValueError(f"rate_503 + rate_429 + rate_timeout is {total:g}; it must be at most 1")
        if self.shed_after_requests is not None and self.shed_s <= 0:
            raise ValueError("shed_after_requests needs shed_s > 0 (the seconds the service sheds load for)")
        return self


def load_chaos(setting: str) -> ChaosConfig | None:
    """The chaos config of a `MICROPROCESS_CHAOS` value (JSON or a path), or None when empty."""
    doc = read_chaos_document(setting)
    if doc is None:
        return None
    try:
        return ChaosConfig.model_validate(doc)
    except ValidationError as exc:
        raise ValueError(f"MICROPROCESS_CHAOS is invalid: {exc}") from None


#: The exit code of a service killed by a crash id (`crash_ids`).
CRASH_EXIT_CODE = 70

#: Names of the counters in `/_chaos/stats`.
FAULTS = ("http_503", "http_429", "timeout", "poison_500", "bad_request_400", "crash", "shed_503")


class ChaosMonkey:
    """Decides the fault of each task request from a seeded stream, and counts them."""

    def __init__(self, config: ChaosConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._shed_from: float | None = None  # when the shedding window began
        self._first_after_shed: float | None = None

    def _shed_left(self, now: float) -> float | None:
        """Seconds left of the shedding window at `now` (None: not shedding). Called under the lock,
        once per request, after the request is counted."""
        c = self.config
        if c.shed_after_requests is None:
            return None
        if self._shed_from is None and self._counts["requests"] > c.shed_after_requests:
            self._shed_from = now
        if self._shed_from is None:
            return None
        left = self._shed_from + c.shed_s - now
        if left <= 0:
            if self._first_after_shed is None:
                self._first_after_shed = now
            return None
        return left

    def retry_after(self, fault: str, now: float | None = None) -> str:
        """The `Retry-After` of an answer with `fault`: the window's seconds left for a shed answer."""
        c = self.config
        if fault != "shed_503":
            return str(c.retry_after_s)
        if c.shed_retry_after_s is not None:
            return str(c.shed_retry_after_s)
        with self._lock:
            until = (self._shed_from or 0.0) + c.shed_s
        return str(max(1, math.ceil(until - (self.clock() if now is None else now))))

    def decide(self, company_id: str | None) -> str | None:
        """The fault for one request (one of `FAULTS`), or None."""
        with self._lock:
            self._counts["requests"] += 1
            draw = self._rng.random()
            fault: str | None = None
            c = self.config
            if self._shed_left(self.clock()) is not None:
                fault = "shed_503"
            elif company_id in c.crash_ids:
                fault = "crash"
            elif company_id in c.poison_ids:
                fault = "poison_500"
            elif company_id in c.bad_request_ids:
                fault = "bad_request_400"
            elif draw < c.rate_503:
                fault = "http_503"
            elif draw < c.rate_503 + c.rate_429:
                fault = "http_429"
            elif draw < c.rate_503 + c.rate_429 + c.rate_timeout:
                fault = "timeout"
            if fault:
                self._counts[fault] += 1
            return fault

    def stats(self) -> dict[str, Any]:
        with self._lock:
            shed_from = self._shed_from
            return {
                "seed": self.config.seed,
                "requests": self._counts["requests"],
                "injected": {name: self._counts[name] for name in FAULTS},
                # epoch seconds: when the shedding window began and ended, and the first task request after it
                "shedding": None
                if shed_from is None
                else {
                    "from": shed_from,
                    "until": shed_from + self.config.shed_s,
                    "first_request_after": self._first_after_shed,
                },
            }


def _company_id(body: bytes) -> str | None:
    try:
        item = json.loads(body).get("item")
    except (ValueError, AttributeError):
        return None
    company_id = item.get("company_id") if isinstance(item, dict) else None
    return company_id if isinstance(company_id, str) else None


class ChaosMiddleware:
    """Pure ASGI middleware injecting `ChaosMonkey`'s faults on `POST <task_path>`."""

    def __init__(self, app: ASGIApp, *, monkey: ChaosMonkey, task_path: str) -> None:
        self.app = app
        self.monkey = monkey
        self.task_path = task_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.task_path:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        fault = self.monkey.decide(_company_id(body))
        if fault:
            log.warning("chaos: injecting %s on %s", fault, self.task_path)
        retry = {"Retry-After": self.monkey.retry_after(fault or "")}
        if fault == "crash":
            log.error("chaos: crashing the service on a poison item, its request read")
            logging.shutdown()
            os._exit(CRASH_EXIT_CODE)  # no answer, no clean-up: the process is gone, as on an OOM
        if fault == "poison_500":
            await error_response(500, "chaos_poison", "chaos: this company always fails")(scope, receive, send)
            return
        if fault == "bad_request_400":
            await error_response(400, "chaos_bad_request", "chaos: this company is a bad request")(scope, receive, send)
            return
        if fault == "http_503":
            await error_response(503, "chaos_unavailable", "chaos: try later", retry)(scope, receive, send)
            return
        if fault == "shed_503":
            await error_response(503, "chaos_shedding", "chaos: shedding load, not now", retry)(scope, receive, send)
            return
        if fault == "http_429":
            await error_response(429, "chaos_throttled", "chaos: slow down", retry)(scope, receive, send)
            return
        if fault == "timeout":
            await asyncio.sleep(self.monkey.config.timeout_s)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
