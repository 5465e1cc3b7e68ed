"""Fault injection for the chaos suite: configured, never coded into behaviour.

`MICROPROCESS_CHAOS` holds a JSON document (or the path of a file with one). The
functions read the keys below; the microservice reads its own keys (503/429/timeout
rates, poison ids) from the same document, and ignores these.

    {"seed": 7, "duplicate_rate": 0.05, "crash_mode": "raise",
     "crash_rates": {"before_push": 0.02, "after_push": 0.02,
                     "after_task_write": 0.02, "after_counter_update": 0.02,
                     "splitter_after_send": 0.3},
     "applied_then_error": 0.05}

`applied_then_error` is the "ambiguous write" fault: that share of the functions' DynamoDB
writes is carried out, then answered as if it had failed (a 5xx or a read timeout), so
the SDK sends it again (ARCHITECTURE §3.8). It is installed on a client with
`FaultInjector.install_ambiguous_writes(client)`.

Every injected fault is logged as `chaos: injected <fault> at <point>` (the chaos suite
counts these lines to check that a scenario's fault really fired) and counted in
`FaultInjector.fired`.

With no setting, `load_faults` returns None and nothing is injected.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

#: Crash points of the forwarder and splitter (the ledger's two are named in microprocess.ledger).
CRASH_POINTS = ("before_push", "after_push", "after_task_write", "after_counter_update", "splitter_after_send")


#: The DynamoDB operations the "applied, then error" fault applies to (the writes).
AMBIGUOUS_WRITE_OPERATIONS = (
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "TransactWriteItems",
    "BatchWriteItem",
    "BatchExecuteStatement",
)
#: The prefix of the log line of every injected fault.
FIRED_LOG_PREFIX = "chaos: injected"


class InjectedCrash(RuntimeError):
    """A crash injected on purpose at a named point."""


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    seed: int = 0
    duplicate_rate: float = Field(default=0.0, ge=0, le=1)
    crash_mode: Literal["raise", "exit"] = "raise"
    crash_rates: dict[str, float] = Field(default_factory=dict)
    applied_then_error: float = Field(default=0.0, ge=0, le=1)

    def model_post_init(self, _: object) -> None:
        unknown = set(self.crash_rates) - set(CRASH_POINTS)
        if unknown:
            raise ValueError(f"unknown crash points {sorted(unknown)}; known: {list(CRASH_POINTS)}")
        bad = {k: v for k, v in self.crash_rates.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"crash rates must be between 0 and 1: {bad}")


class FaultInjector:
    """Decides, with a seeded random stream, when to crash or duplicate."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        # Each process gets its own stream (Lambda workers share the seed, not the draws).
        self._rng = random.Random(config.seed * 1_000_003 + os.getpid())
        self._lock = threading.Lock()
        #: Faults injected so far, by `<fault> at <point>`.
        self.fired: Counter[str] = Counter()

    def _fire(self, fault: str, point: str) -> None:
        with self._lock:
            self.fired[f"{fault} at {point}"] += 1
        log.warning("%s %s at %s", FIRED_LOG_PREFIX, fault, point)

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def maybe_crash(self, point: str) -> None:
        rate = self.config.crash_rates.get(point, 0.0)
        if rate and self._draw() < rate:
            self._fire("crash", point)
            if self.config.crash_mode == "exit":
                os._exit(70)
            raise InjectedCrash(f"chaos: injected crash at {point}")

    def duplicate(self) -> bool:
        if self.config.duplicate_rate and self._draw() < self.config.duplicate_rate:
            self._fire("duplicate", "delivery")
            return True
        return False

    def install_ambiguous_writes(self, client: Any) -> None:
        """Make `applied_then_error` of the writes of a boto3 DynamoDB `client` ambiguous: the
        request is carried out, then botocore is told to retry it, as it does after a 500 or a
        read timeout on a request the service had applied. Each request is retried at most
        once this way. Does nothing when the rate is 0."""
        if not self.config.applied_then_error:
            return

        def needs_retry(response: Any, attempts: int, operation: Any, **_: Any) -> int | None:
            http = response[0] if isinstance(response, tuple) and response else None
            if attempts != 1 or http is None or getattr(http, "status_code", 500) >= 300:
                return None
            if operation.name not in AMBIGUOUS_WRITE_OPERATIONS:
                return None
            if self._draw() >= self.config.applied_then_error:
                return None
            self._fire("applied_then_error", operation.name)
            return 0  # retry at once: the SDK sends the applied request again

        client.meta.events.register("needs-retry.dynamodb", needs_retry, unique_id="microprocess-chaos-ambiguous")


def read_chaos_document(setting: str) -> dict[str, Any] | None:
    """The `MICROPROCESS_CHAOS` document (given as JSON, or as the path of a JSON file), or
    None when the setting is empty. Shared by the functions and the queue service."""
    if not setting.strip():
        return None
    text = setting
    if not setting.lstrip().startswith(("{", "[")):
        path = Path(setting)
        if not path.is_file():
            raise ValueError(f"MICROPROCESS_CHAOS names {setting!r}, which is neither JSON nor a file")
        text = path.read_text()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"MICROPROCESS_CHAOS is invalid: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"MICROPROCESS_CHAOS is invalid: expected a JSON object, got {type(doc).__name__}")
    return doc


def load_faults(setting: str) -> FaultInjector | None:
    """The injector for a `MICROPROCESS_CHAOS` value (JSON or a path), or None when empty."""
    doc = read_chaos_document(setting)
    if doc is None:
        return None
    try:
        return FaultInjector(FaultConfig.model_validate(doc))
    except (ValidationError, ValueError) as exc:
        raise ValueError(f"MICROPROCESS_CHAOS is invalid: {exc}") from None
