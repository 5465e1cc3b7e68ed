"""Watching a run until it ends: the live progress bar of `--wait`.

Each poll reads the run's progress from the ledger (one run read and one batch read
of its counters) and the depth of the task queue and the dead-letter queue. The bar
shows done/total, the completion rate over the last few seconds, the ETA, failures,
queue messages visible / in flight, and the DLQ depth; once the reduce is claimed, the
reduce phase (parts done of total, the finalize, the email) and the reduce queue's depth.

Outside a terminal (a CI log, a pipe, `nohup`) a bar that redraws itself is one garbled line;
there the watch prints one plain line per interval (`plain_interval_s`), and one whenever the
status changes, the last when the run ends.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from microprocess.ledger import Ledger, RunNotFound, RunStatus
from microprocess.ledger import Progress as RunProgress

#: How long a just-started run may be missing from the ledger (the asynchronous splitter has not
#: created it yet) before the watch gives up, s.
DEFAULT_START_GRACE_S = 60.0


class WaitTimeout(TimeoutError):
    """The run did not end in time; `last` is the last progress seen."""

    def __init__(self, message: str, last: RunProgress | None) -> None:
        super().__init__(message)
        self.last = last


class RunNeverStarted(RunNotFound):
    """The run did not appear in the ledger within the start grace period."""


@dataclass(frozen=True)
class QueueDepth:
    visible: int | None = None
    in_flight: int | None = None
    dead_letters: int | None = None


def _attr(sqs: Any, url: str | None, names: list[str]) -> dict[str, int]:
    if not url:
        return {}
    try:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    except Exception:  # a progress display must never end the watch
        return {}
    return {k: int(v) for k, v in attrs.items()}


def queue_depth(sqs: Any, queue_url: str | None, dlq_url: str | None) -> QueueDepth:
    main = _attr(sqs, queue_url, ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    dead = _attr(sqs, dlq_url, ["ApproximateNumberOfMessages"])
    return QueueDepth(
        visible=main.get("ApproximateNumberOfMessages"),
        in_flight=main.get("ApproximateNumberOfMessagesNotVisible"),
        dead_letters=dead.get("ApproximateNumberOfMessages"),
    )


@dataclass(frozen=True)
class ReducePhase:
    """Where a run's reduce is: parts done of total, the finalize, the email, the reduce queue.

    Attributes:
        parts_done: reduce parts recorded done (one per ledger shard).
        parts_total: the run's shard count.
        finalize_claimed: the last part has claimed the finalize.
        email: `sent`, `sending` (claimed, not confirmed), or `-`.
        queue_visible: reduce queue messages waiting (None when unknown).
        queue_in_flight: reduce queue messages being handled (None when unknown).
    """

    parts_done: int
    parts_total: int
    finalize_claimed: bool
    email: str
    queue_visible: int | None = None
    queue_in_flight: int | None = None

    def describe(self) -> str:
        finalize = "claimed" if self.finalize_claimed else "waiting for the parts"
        queue = f"; reduce queue {_n(self.queue_visible)} (+{_n(self.queue_in_flight)} in flight)"
        return f"parts {self.parts_done}/{self.parts_total}, finalize {finalize}, email {self.email}{queue}"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def reduce_phase(
    ledger: Ledger, run_id: str, *, sqs: Any = None, reduce_queue_url: str | None = None
) -> ReducePhase | None:
    """The reduce phase of a run whose reduce is claimed (None before): two reads of the ledger
    (the run's reduce attributes, its set of done parts) and one of the reduce queue."""
    from microprocess.ledger.records import _from_ddb, _run_pk, _to_ddb

    resp = ledger.client.get_item(
        TableName=ledger.table_name,
        Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
        ProjectionExpression="reduce_claimed_at, finalize_claimed_at, email_claimed_at, email_sent_at, shard_count",
        ConsistentRead=True,
    )
    run = _from_ddb(resp.get("Item", {}))
    if not run.get("reduce_claimed_at"):
        return None
    email = "sent" if run.get("email_sent_at") else "sending" if run.get("email_claimed_at") else "-"
    depth = queue_depth(sqs, reduce_queue_url, None) if sqs is not None else QueueDepth()
    return ReducePhase(
        parts_done=len(ledger.parts_done(run_id)),
        parts_total=int(run.get("shard_count", 0)),
        finalize_claimed=bool(run.get("finalize_claimed_at")),
        email=email,
        queue_visible=depth.visible,
        queue_in_flight=depth.in_flight,
    )


class RateMeter:
    """Completions per second over a sliding window of samples."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> float | None:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        if now - t0 < 0.2:
            return None
        return max(done - d0, 0) / (now - t0)


def _fmt_eta(remaining: int, rate: float | None) -> str:
    if remaining == 0:
        return "0:00"
    if not rate:
        return "-:--"
    s = int(remaining / rate)
    return f"{s // 60}:{s % 60:02d}"


def _n(v: int | None) -> str:
    return "?" if v is None else str(v)


def watch_run(
    ledger: Ledger,
    run_id: str,
    *,
    sqs: Any = None,
    queue_url: str | None = None,
    dlq_url: str | None = None,
    reduce_queue_url: str | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 0.5,
    start_grace_s: float = DEFAULT_START_GRACE_S,
    console: Console | None = None,
    show: bool = True,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    plain_interval_s: float = 10.0,
) -> RunProgress:
    """Poll the run until its status is terminal; return the final progress.

    Raises `WaitTimeout` after `timeout_s` seconds, and `RunNeverStarted` if the run is not
    in the ledger after `start_grace_s` seconds.
    """
    console = console or Console(stderr=True)
    plain = PlainLines(console, run_id, plain_interval_s) if show and not console.is_terminal else None
    started = clock()
    meter = RateMeter()
    last: RunProgress | None = None
    bar = Progress(
        TextColumn("[bold]{task.fields[status]:<10}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>7}/s  ETA {task.fields[eta]:>5}"),
        TextColumn("failed [red]{task.fields[failed]}[/]"),
        TextColumn("queue {task.fields[q_visible]} (+{task.fields[in_flight]} in flight)"),
        TextColumn("DLQ {task.fields[dlq]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[phase]}"),
        console=console,
        transient=False,
        disable=not show or plain is not None,
        refresh_per_second=4,
    )
    with bar:
        task = bar.add_task(
            run_id,
            total=None,
            status="STARTING",
            rate="-",
            eta="-:--",
            failed=0,
            q_visible="?",
            in_flight="?",
            dlq="?",
            phase="",
        )
        while True:
            now = clock()
            try:
                last = ledger.progress(run_id)
            except RunNotFound:
                if now - started > start_grace_s:
                    raise RunNeverStarted(
                        f"run {run_id} is not in the ledger {start_grace_s:.0f} s after it was started: "
                        "the splitter did not create it (look at the splitter function's log)"
                    ) from None
            depth = queue_depth(sqs, queue_url, dlq_url) if sqs is not None else QueueDepth()
            if last is not None:
                done = last.succeeded + last.failed
                phase = None
                if last.status is RunStatus.REDUCING or (last.status.terminal and last.report_uri):
                    phase = reduce_phase(ledger, run_id, sqs=sqs, reduce_queue_url=reduce_queue_url)
                rate = meter.add(now, done)
                if last.status.terminal and now > started:
                    rate = done / (now - started)  # the whole run's average, not its quiet reduce tail
                fields: dict[str, Any] = {
                    "status": str(last.status),
                    "rate": "-" if rate is None else f"{rate:,.0f}",
                    "eta": _fmt_eta(last.pending, rate) if last.split_done else "-:--",
                    "failed": last.failed,
                    "q_visible": _n(depth.visible),
                    "in_flight": _n(depth.in_flight),
                    "dlq": _n(depth.dead_letters),
                    "phase": f"reduce: {phase.describe()}" if phase else "",
                }
                bar.update(task, total=last.expected or None, completed=done, **fields)
                if plain is not None:
                    plain.maybe_print(now - started, last, fields)
                if last.status.terminal:
                    bar.refresh()
                    return last
            if now - started > timeout_s:
                status = last.status if last else "not started"
                raise WaitTimeout(f"run {run_id} is still {status} after {timeout_s:.0f} s", last)
            sleep(poll_s)


class PlainLines:
    """The watch's output outside a terminal: one plain line per interval, and on a status change."""

    def __init__(self, console: Console, run_id: str, interval_s: float) -> None:
        self.console, self.run_id, self.interval_s = console, run_id, interval_s
        self._printed_at: float | None = None
        self._status = ""

    def maybe_print(self, elapsed_s: float, progress: RunProgress, fields: dict[str, Any]) -> None:
        due = self._printed_at is None or elapsed_s - self._printed_at >= self.interval_s
        if not (due or fields["status"] != self._status or progress.status.terminal):
            return
        self._printed_at, self._status = elapsed_s, fields["status"]
        self.console.print(
            plain_line(self.run_id, elapsed_s, progress, fields), markup=False, highlight=False, soft_wrap=True
        )


def plain_line(run_id: str, elapsed_s: float, progress: RunProgress, fields: dict[str, Any]) -> str:
    """`<run> RUNNING 1,200/2,000 (60%) 310/s ETA 0:02 failed 3 queue 40 (+10 in flight) DLQ 0 0:07`."""
    done = progress.succeeded + progress.failed
    total = f"{progress.expected:,}" if progress.expected else "?"
    pct = f" ({100 * done / progress.expected:.0f}%)" if progress.expected else ""
    elapsed = int(elapsed_s)
    line = (
        f"{run_id} {fields['status']} {done:,}/{total}{pct} {fields['rate']}/s ETA {fields['eta']} "
        f"failed {fields['failed']} queue {fields['q_visible']} (+{fields['in_flight']} in flight) "
        f"DLQ {fields['dlq']} {elapsed // 60}:{elapsed % 60:02d}"
    )
    return f"{line} {fields['phase']}" if fields["phase"] else line
