"""P7 measured: adaptive vs static concurrency on the local stack, against a service admitting K pushes.

    .venv/bin/python -m bench.adaptive_local [--items 4000] [--slots 10] [--service-ms 50] [--interval 3]

Beside the simulation (`bench.adaptive`), a real measurement on the local stack: the same job
(the bench's credit-scores over the seeded companies) runs twice through the whole pipeline,
its forwarder pointed at a third instance of the bench's service whose task endpoint admits
only K pushes at once (`bench.noop_service.admit`: 429 `Retry-After: 1` above K, each admitted
push served in `service_ms`):

* **static**: the job's event source mapping at the local stack's maximum concurrency
  (`microprocess.local.tuning.laptop_concurrency`, e.g. 8 batches on 2 cores) throughout;
* **adaptive**: the same maximum to start with, and a loop in this process ticking the
  project's `AdaptiveConcurrency` (the `AimdController` with the local maximum as its ceiling)
  every `interval` seconds from that interval's signals, read from the forwarder's EMF log lines
  (`microprocess.local.signals.LogSignals`: the emulator computes no CloudWatch metrics) and
  applied to the mapping with `scale.JobScaler` (UpdateEventSourceMapping; the emulator's
  poller honours a new MaximumConcurrency at its next pass).

Rejected pushes (429s) are counted by the service's admission (the truth, not the
forwarder's view); wall time is from the start request to the moment every task is terminal
(the run's reduce claim); tasks FAILED from the ledger's counters.

How it differs from AWS: the controller's interval is seconds here, a minute on AWS (CloudWatch's
metric period, and a mapping update takes effect within about a minute there); the maximum is the
laptop's 8 concurrent batches, not the job's declared 50; the forwarder's batches cost a few
hundred ms of emulator time each, so a batch pushes only part of its time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import BenchStack, Echo, Loop, echo_stderr, start_run, wait_until_ended, write_figures
from bench.noop_service import ADMISSION_PATH, SERVICE_MS_ENV, SLOTS_ENV
from microprocess.control.adaptive import AdaptiveConcurrency, AimdSettings, Decision
from microprocess.control.scale import JobScaler
from microprocess.declarations import JobDeclaration
from microprocess.ledger import Ledger
from microprocess.local.signals import LogSignals
from tests.declared import CREDIT_SCORES

LABEL = (
    "P7 adaptive vs static concurrency (MEASURED on the local stack: controller ticking every few seconds "
    "from the forwarder's EMF log lines, at the laptop's maximum concurrency)"
)
METHOD = (
    "bench.adaptive_local: its own local stack (BenchStack) seeded with N companies; the forwarder pointed at a "
    "bench service whose task endpoint admits K pushes at once (429 Retry-After: 1 above; each admitted push "
    "served in a fixed time); the job run twice through the whole pipeline: static = the event source mapping "
    "at the local maximum concurrency throughout; adaptive = the same start and AdaptiveConcurrency (AimdController, "
    "ceiling = the local maximum) ticked every few seconds in the bench process, its signals read from the "
    "forwarder's EMF log lines of the last interval (microprocess.local.signals.LogSignals), its caps applied "
    "with UpdateEventSourceMapping. Rejected pushes counted by the service's admission; wall time = start "
    "request -> reduce claim (or the run's end when it FAILED); tasks FAILED from the ledger. Differs from AWS: "
    "interval seconds instead of a minute, the laptop's maximum (8 batches on 2 cores) instead of the declared 50."
)
ITEMS = 4000
SLOTS = 30
SERVICE_MS = 100.0
INTERVAL_S = 3.0
RESULTS = Path(__file__).resolve().parent / "results" / "adaptive-local-latest.json"


@dataclass
class LocalOutcome:
    """One measured run."""

    mode: str
    items: int
    wall_s: float
    status: str
    succeeded: int
    failed: int
    admitted: int
    rejected: int
    peak_in_flight: int
    caps: list[int] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rejected_per_1000_items(self) -> float:
        return round(self.rejected * 1000 / self.items, 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "items": self.items,
            "wall_s": round(self.wall_s, 2),
            "status": self.status,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "admitted_pushes": self.admitted,
            "rejected_pushes": self.rejected,
            "rejected_per_1000_items": self.rejected_per_1000_items,
            "peak_in_flight": self.peak_in_flight,
            "caps": self.caps,
            "decisions": self.decisions,
        }


def start_admission_service(bs: BenchStack, slots: int, service_ms: float) -> str:
    """A third bench service whose task endpoint admits `slots` pushes at once; its URL. Stopped with `bs`."""
    return bs.spawn_noop_service(
        "bench-admission-service", extra_env={SLOTS_ENV: str(slots), SERVICE_MS_ENV: str(service_ms)}
    )


def admission(url: str, *, reset: bool = False) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}{ADMISSION_PATH}", method="POST" if reset else "GET", data=b"" if reset else None
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


class Ticker(Loop):
    """Ticks `AdaptiveConcurrency` every `interval_s` seconds in a thread until stopped (after one interval)."""

    def __init__(self, control: AdaptiveConcurrency, interval_s: float, echo: Echo) -> None:
        super().__init__(self._tick, interval_s, wait_first=True)
        self.control, self.echo = control, echo
        self.decisions: list[tuple[float, Decision]] = []

    def _tick(self) -> None:
        for decision in self.control.tick().values():
            self.decisions.append((time.monotonic() - self.started, decision))
            if decision.concurrency != decision.previous:
                self.echo(
                    f"    t={time.monotonic() - self.started:5.1f} s: cap {decision.previous} -> "
                    f"{decision.concurrency} ({decision.reason})"
                )


def run_once(
    bs: BenchStack,
    job: JobDeclaration,
    *,
    mode: str,
    url: str,
    scaler: JobScaler,
    maximum: int,
    interval_s: float,
    echo: Echo,
    timeout_s: float = 600.0,
) -> LocalOutcome:
    """One run of the job with the mapping at `maximum` (static) or under the controller (adaptive)."""
    scaler.set(job, maximum)
    ledger = Ledger(bs.outputs["LedgerTable"], client=bs.client("dynamodb"))
    admission(url, reset=True)
    run_id = f"{job.name}-bench-p7-{mode}-{time.strftime('%Y%m%dT%H%M%S')}"  # its job's name first (run_keys)
    control = AdaptiveConcurrency(
        jobs=[job],
        scaler=scaler,
        signals=LogSignals.for_function(
            bs.client("lambda"), bs.client("logs"), bs.functions["forwarder"], window_s=interval_s
        ),
        settings=lambda j: AimdSettings(
            ceiling=maximum, batch_size=j.batch_size, latency_limit_ms=0.8 * j.task_timeout_s * 1000
        ),
    )
    ticker = Ticker(control, interval_s, echo)
    start_cap = maximum
    if mode == "adaptive":
        # As deployed, the controller ticks while the job is idle before a run (slow start): one
        # tick over an interval without pushes (the static run's last ones are older than it).
        time.sleep(interval_s)
        start_cap = control.tick()[job.name].concurrency
        echo(f"    idle tick before the run: cap {maximum} -> {start_cap}")
    started = time.time()
    start_run(bs, job.name, run_id)
    if mode == "adaptive":
        ticker.__enter__()
    try:
        run = wait_until_ended(ledger, run_id, started=started, timeout_s=timeout_s, echo=echo, indent="    ")
        ended = time.time()
    finally:
        if mode == "adaptive":
            ticker.__exit__()
    from bench.figures import parse_time

    claimed = parse_time(run.reduce_claimed_at) if run.reduce_claimed_at else None
    progress = ledger.progress(run_id)
    counts = admission(url)
    if ticker.errors:
        echo(f"    the controller's ticks failed {len(ticker.errors)} times, e.g. {ticker.errors[0]}")
    return LocalOutcome(
        mode=mode,
        items=run.expected,
        wall_s=(claimed or ended) - started,
        status=str(run.status),
        succeeded=progress.succeeded,
        failed=progress.failed,
        admitted=int(counts["admitted"]),
        rejected=int(counts["rejected"]),
        peak_in_flight=int(counts["peak"]),
        caps=[start_cap] + [d.concurrency for _, d in ticker.decisions],
        decisions=[{"t_s": round(t, 1), **d.as_dict()} for t, d in ticker.decisions],
    )


def measure_local(
    bs: BenchStack,
    *,
    slots: int = SLOTS,
    service_ms: float = SERVICE_MS,
    interval_s: float = INTERVAL_S,
    echo: Echo,
) -> dict[str, Any]:
    """P7 measured on `bs` (its seeded items): static then adaptive; the results dict's `p7_measured`."""
    job = CREDIT_SCORES
    maximum = bs.concurrency()
    url = start_admission_service(bs, slots, service_ms)
    bs.point_functions(counted=False, url=url)
    scaler = JobScaler(
        lambda_client=bs.client("lambda"),
        sqs=bs.client("sqs"),
        forwarder_function=bs.functions["forwarder"],
        job_queue_urls=json.loads(bs.outputs.get("JobQueueUrls") or "{}"),
    )
    outcomes: dict[str, LocalOutcome] = {}
    try:
        for mode in ("static", "adaptive"):
            echo(f"P7 measured ({mode}): {bs.items:,} tasks, service admits {slots} pushes at once, cap {maximum} …")
            o = run_once(bs, job, mode=mode, url=url, scaler=scaler, maximum=maximum, interval_s=interval_s, echo=echo)
            echo(
                f"  {o.rejected_per_1000_items:,.1f} rejected / 1,000 items, {o.wall_s:.1f} s, {o.failed} FAILED, "
                f"{o.status}, caps {o.caps[:12]}"
            )
            outcomes[mode] = o
    finally:
        scaler.set(job, maximum)
        bs.point_functions(counted=False)
    s, a = outcomes["static"], outcomes["adaptive"]
    rejected_ratio = round(s.rejected / a.rejected, 2) if a.rejected else None
    wall_ratio = round(a.wall_s / s.wall_s, 3)
    return {
        "label": LABEL,
        "method": METHOD,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "job": job.name,
        "items": bs.items,
        "slots": slots,
        "service_ms": service_ms,
        "interval_s": interval_s,
        "max_concurrency": maximum,
        "batch_size": job.batch_size,
        "static": s.as_dict(),
        "adaptive": a.as_dict(),
        "rejected_ratio": rejected_ratio,  # static's rejected pushes / adaptive's (None: adaptive had none)
        "wall_time_ratio": wall_ratio,  # adaptive / static
        "aim_met": {
            "rejected": rejected_ratio is None or rejected_ratio >= 5,
            "wall_time": wall_ratio <= 1.1,
        },
        "differs_from_aws": (
            f"controller interval {interval_s:g} s (a minute on AWS, where a mapping update takes up to a minute); "
            f"maximum {maximum} concurrent batches (the laptop's), not the declared {job.max_concurrency}; "
            f"service time {service_ms:g} ms per push, K = {slots} pushes"
        ),
    }


def lines(p7: dict[str, Any]) -> list[tuple[str, str]]:
    """The bench table's rows for the measured P7."""
    s, a = p7["static"], p7["adaptive"]
    met = p7["aim_met"]
    ratio = f"{p7['rejected_ratio']}x fewer" if p7["rejected_ratio"] is not None else "none adaptive"
    return [
        (
            "P7 measured",
            f"local stack, {p7['items']:,} items, service admits {p7['slots']} pushes at once "
            f"({p7['service_ms']:g} ms each), max {p7['max_concurrency']} batches of {p7['batch_size']}, "
            f"controller every {p7['interval_s']:g} s from EMF log lines (AWS: a minute)",
        ),
        (
            "P7 m. static",
            f"{s['rejected_per_1000_items']:,.1f} rejected pushes / 1,000 items, {s['wall_s']:.1f} s, "
            f"{s['failed']:,} tasks FAILED (cap {p7['max_concurrency']})",
        ),
        (
            "P7 m. adaptive",
            f"{a['rejected_per_1000_items']:,.1f} rejected pushes / 1,000 items, {a['wall_s']:.1f} s, "
            f"{a['failed']:,} tasks FAILED (caps {a['caps'][:12]}{'...' if len(a['caps']) > 12 else ''})",
        ),
        (
            "P7 m. ratio",
            f"{ratio}, wall time x{p7['wall_time_ratio']:.2f}  (aim: >= 5x fewer "
            f"{'met' if met['rejected'] else 'MISSED'}, <= 1.1x {'met' if met['wall_time'] else 'MISSED'})",
        ),
    ]


def measure_standalone(
    items: int = ITEMS,
    *,
    slots: int = SLOTS,
    service_ms: float = SERVICE_MS,
    interval_s: float = INTERVAL_S,
    echo: Echo,
) -> dict[str, Any]:
    """P7 measured on a local stack of its own, seeded with `items` companies (started and stopped here)."""
    echo(f"P7 measured: starting a local stack with {items:,} companies …")
    with BenchStack(items=items, echo=echo) as bs:
        return measure_local(bs, slots=slots, service_ms=service_ms, interval_s=interval_s, echo=echo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="P7 measured on its own local stack (static vs adaptive).")
    parser.add_argument("--items", type=int, default=ITEMS)
    parser.add_argument("--slots", type=int, default=SLOTS, help="K: pushes the service admits at once")
    parser.add_argument("--service-ms", type=float, default=SERVICE_MS, help="an admitted push's service time")
    parser.add_argument("--interval", type=float, default=INTERVAL_S, help="the controller's interval, s")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where the result JSON goes (default {RESULTS})")
    args = parser.parse_args(argv)

    result = measure_standalone(
        args.items, slots=args.slots, service_ms=args.service_ms, interval_s=args.interval, echo=echo_stderr
    )
    write_figures(args.out, result, lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
