"""The functions' metrics: counted during an invocation, written once at its end.

Every count is a CloudWatch metric with the `job` dimension, written as Embedded Metric Format
(EMF) through Powertools. One EMF document per metric cost the forwarder three log lines per
batch (pushes, push time, tasks succeeded: about 280 bytes each); CloudWatch Logs bills every
byte ingested, so an invocation's counts go out together: one document per job and run, with
the run as metadata (`run_id`). The counts without a run (a batch's pushes) join the job's
first document. A metric counted more than once keeps each value (EMF takes an array; the Sum
statistic adds them), so nothing is merged away.

`flush` is the handler's last step (in a `finally`); an invocation that dies before it loses
its counts, as it would have lost the lines it had not printed yet.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

#: Writes one document: (job, run_id or None, [(metric name, value), ...]).
DocumentWriter = Callable[[str, str | None, list[tuple[str, float]]], None]


class InvocationMetrics:
    """An emitter (`emit(name, value, job, *, run_id=None)`) that buffers until `flush`.

    Thread-safe: a batch's pushes are observed from several threads.

    Args:
        write: writes one document, given (job, run_id or None, [(name, value), ...]);
            default: a Powertools `EphemeralMetrics` flush to stdout.
    """

    def __init__(self, write: DocumentWriter | None = None) -> None:
        self._write = write or _write_emf
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str | None, list[tuple[str, float]]]] = {}

    def __call__(self, name: str, value: float, job: str, *, run_id: str | None = None) -> None:
        if not value:  # a zero adds nothing to a Sum, and costs a log byte
            return
        with self._lock:
            self._counts.setdefault(job, {}).setdefault(run_id, []).append((name, float(value)))

    def flush(self) -> int:
        """Write what was counted since the last flush; returns the documents written."""
        with self._lock:
            counts, self._counts = self._counts, {}
        written = 0
        for job, by_run in counts.items():
            loose = by_run.pop(None, [])
            if not by_run:
                self._write(job, None, loose)
                written += 1
                continue
            for i, (run_id, metrics) in enumerate(by_run.items()):
                self._write(job, run_id, loose + metrics if i == 0 else metrics)
                written += 1
        return written


def _write_emf(job: str, run_id: str | None, metrics: list[tuple[str, float]]) -> None:
    from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

    doc = EphemeralMetrics(default_dimensions={"job": job})
    for name, value in metrics:
        doc.add_metric(name=name, unit=MetricUnit.Count, value=value)
    if run_id:
        doc.add_metadata(key="run_id", value=run_id)
    doc.flush_metrics()
