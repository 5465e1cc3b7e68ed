"""Fault injection for the chaos suite: configured, never coded into behaviour.

`MICROPROCESS_CHAOS` holds a JSON document (or the path of a file with one). The
functions read the keys below; the microservice reads its own keys (503/429/timeout
rates, poison ids) from the same document, and ignores these.

    {"seed": 7, "duplicate_rate": 0.05, "crash_mode": "raise",
     "crash_rates": {"before_push": 0.02, "after_push": 0.02,
                     "after_task_write": 0.02, "after_counter_update": 0.02,
                     "splitter_after_send": 0.3}}

With no setting, `load_faults` returns None and nothing is injected.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger(__name__)

#: Crash points of the forwarder and splitter (the ledger's two are named in microprocess.ledger).
CRASH_POINTS = ("before_push", "after_push", "after_task_write", "after_counter_update", "splitter_after_send")


class InjectedCrash(RuntimeError):
    """A crash injected on purpose at a named point."""


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    seed: int = 0
    duplicate_rate: float = Field(default=0.0, ge=0, le=1)
    crash_mode: Literal["raise", "exit"] = "raise"
    crash_rates: dict[str, float] = Field(default_factory=dict)

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

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def maybe_crash(self, point: str) -> None:
        rate = self.config.crash_rates.get(point, 0.0)
        if rate and self._draw() < rate:
            log.warning("chaos: injected crash at %s", point)
            if self.config.crash_mode == "exit":
                os._exit(70)
            raise InjectedCrash(f"chaos: injected crash at {point}")

    def duplicate(self) -> bool:
        return bool(self.config.duplicate_rate) and self._draw() < self.config.duplicate_rate


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
