"""The adaptive concurrency's signals on the local stack, from the forwarder's EMF log lines.

On AWS, CloudWatch turns the forwarder's EMF log lines (`observe_pushes`: ServicePushes,
ServiceThrottled, ServiceShed, PushBatchMilliseconds, dimension `job`) into metrics that
`CloudWatchSignals` reads. The emulator keeps the log lines but computes no metrics from
them, so `LogSignals` reads the lines of the last `window_s` seconds from the forwarder's log
group and computes the same `Signals`: the sums of the counts, and the p90 of the batch times
(nearest rank, as CloudWatch's percentile of the individual values).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from microprocess.control.adaptive import METRIC_NAMESPACE, Signals
from microprocess.local.emulator import log_group_of, log_messages

PUSHES, THROTTLED, SHED, BATCH_MS = "ServicePushes", "ServiceThrottled", "ServiceShed", "PushBatchMilliseconds"


def emf_metrics(
    message: str, namespace: str = METRIC_NAMESPACE
) -> tuple[dict[str, Any], dict[str, list[float]]] | None:
    """(the EMF document, {metric name: its values}) of one log message; None when it is not EMF
    of `namespace`. Powertools writes a metric's values as an array (`"ServicePushes": [10.0]`)."""
    if '"_aws"' not in message:
        return None
    try:
        doc = json.loads(message[message.index("{") :])
        directives = doc["_aws"]["CloudWatchMetrics"]
    except (ValueError, KeyError, TypeError):
        return None
    values: dict[str, list[float]] = {}
    for directive in directives:
        if directive.get("Namespace") != namespace:
            continue
        for metric in directive.get("Metrics", []):
            raw = doc.get(metric.get("Name"))
            numbers = [v for v in (raw if isinstance(raw, list) else [raw]) if isinstance(v, int | float)]
            if numbers:
                values[metric["Name"]] = [float(v) for v in numbers]
    return (doc, values) if values else None


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def signals_from_messages(
    messages: Iterable[str],
    job: str,
    *,
    interval_s: float,
    start_ms: int | None = None,
    end_ms: int | None = None,
    namespace: str = METRIC_NAMESPACE,
) -> Signals:
    """A job's `Signals` from log messages: EMF lines with dimension `job` = `job` (and, when
    given, an EMF `Timestamp` in [start_ms, end_ms))."""
    pushes = throttled = shed = 0.0
    batch_ms: list[float] = []
    for message in messages:
        found = emf_metrics(message, namespace)
        if found is None:
            continue
        doc, values = found
        if doc.get("job") != job:
            continue
        stamp = doc["_aws"].get("Timestamp")
        if isinstance(stamp, int | float) and (
            (start_ms is not None and stamp < start_ms) or (end_ms is not None and stamp >= end_ms)
        ):
            continue
        pushes += sum(values.get(PUSHES, []))
        throttled += sum(values.get(THROTTLED, []))
        shed += sum(values.get(SHED, []))
        batch_ms.extend(values.get(BATCH_MS, []))
    return Signals(
        pushes=int(pushes),
        throttled=int(throttled),
        p90_latency_ms=percentile(batch_ms, 90),
        interval_s=interval_s,
        shed=int(shed),
    )


@dataclass
class LogSignals:
    """Reads a job's signals of the last `window_s` seconds from the forwarder's log group.

    Args:
        logs: a CloudWatch Logs client (the emulator's).
        log_group: the forwarder's log group.
        window_s: the interval the signals cover (the controller's tick).
        lag_s: how far behind now the window ends: the worker's lines reach the log group when
            its invocation ends, so the newest second is not complete yet.
    """

    logs: Any
    log_group: str
    window_s: float = 5.0
    lag_s: float = 0.0
    now: Callable[[], float] = field(default=time.time)

    def __call__(self, job: str) -> Signals:
        end_ms = int((self.now() - self.lag_s) * 1000)
        start_ms = end_ms - int(self.window_s * 1000)
        # Events are read by their log time (not before the EMF time) with a margin, then kept by their EMF time.
        messages = log_messages(self.logs, self.log_group, start_ms - 2000, int(self.now() * 1000) + 1000)
        return signals_from_messages(messages, job, interval_s=self.window_s, start_ms=start_ms, end_ms=end_ms)

    @classmethod
    def for_function(cls, lambda_client: Any, logs: Any, function: str, **kwargs: Any) -> LogSignals:
        """The signals of the named forwarder function (its log group from its configuration)."""
        config = lambda_client.get_function_configuration(FunctionName=function)
        return cls(logs=logs, log_group=log_group_of(config, function), **kwargs)
