"""The run page's live updates: server-sent events, and the samples behind its charts.

Each event is one `progress` message (the panel's HTML, rendered by the same template as the
page, and one chart sample as JSON); a run that has ended gets a last `progress` and an `end`.
The console keeps each watched run's samples in memory (`RunSampler`), so a page opened later
shows the history since the console first watched the run.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from microprocess.control.adaptive import Signals

#: Samples kept per run (at one a second: the last 30 minutes; older ones are thinned out).
SAMPLES_KEPT = 1800
#: How often the service's signals (pushes, 429/503 answers) are read for a run's job, s.
SIGNALS_EVERY_S = 10.0


def sse_event(event: str, data: Any, *, event_id: str | None = None, retry_ms: int | None = None) -> str:
    """One server-sent event: `retry:`, `id:`, `event:` and its JSON `data:` lines, then a blank line."""
    lines = []
    if retry_ms is not None:
        lines.append(f"retry: {int(retry_ms)}")
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    # json.dumps escapes newlines inside strings, so the payload is one line; split anyway.
    lines.extend(f"data: {line}" for line in json.dumps(data, separators=(",", ":"), default=str).split("\n"))
    return "\n".join(lines) + "\n\n"


@dataclass(frozen=True)
class Sample:
    """One point of a run's charts.

    Attributes:
        t: Unix time of the read, s.
        done: tasks done (succeeded + failed).
        failed: tasks failed.
        rate: tasks done per second since the previous sample (None for the first).
        throttled: the job's pushes answered 429/503 per second over the last signals interval
            (None when not read).
        pushes: the job's pushes per second over that interval (None when not read).
        concurrency: the job's concurrency cap in force (None when unknown).
    """

    t: float
    done: int
    failed: int
    rate: float | None
    throttled: float | None
    pushes: float | None
    concurrency: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunSampler:
    """Chart samples per run, and the job's service signals read at most every `SIGNALS_EVERY_S`."""

    def __init__(
        self, signals: Callable[[str], Signals] | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._signals = signals
        self._clock = clock
        self._samples: dict[str, deque[Sample]] = {}
        self._last_signals: dict[str, tuple[float, Signals | None]] = {}
        self._lock = threading.Lock()

    def history(self, run_id: str) -> list[Sample]:
        with self._lock:
            return list(self._samples.get(run_id, ()))

    def _job_signals(self, job: str, now: float) -> Signals | None:
        with self._lock:
            last = self._last_signals.get(job)
        if last is not None and now - last[0] < SIGNALS_EVERY_S:
            return last[1]
        found = None
        if self._signals is not None:
            try:
                found = self._signals(job)
            except Exception:  # a chart never fails on its metrics: the point has no 429 figure
                found = None
        with self._lock:
            self._last_signals[job] = (now, found)
        return found

    def add(self, run_id: str, job: str, *, done: int, failed: int, concurrency: int | None) -> Sample:
        now = self._clock()
        signals = self._job_signals(job, now)
        with self._lock:
            samples = self._samples.setdefault(run_id, deque(maxlen=SAMPLES_KEPT))
            prev = samples[-1] if samples else None
            rate = (done - prev.done) / (now - prev.t) if prev is not None and now > prev.t else None
            per_s = signals.interval_s if signals is not None and signals.interval_s > 0 else None
            sample = Sample(
                t=now,
                done=done,
                failed=failed,
                rate=max(rate, 0.0) if rate is not None else None,
                throttled=signals.throttled / per_s if signals is not None and per_s else None,
                pushes=signals.pushes / per_s if signals is not None and per_s else None,
                concurrency=concurrency,
            )
            samples.append(sample)
            return sample
