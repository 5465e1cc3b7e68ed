"""P7: adaptive vs static concurrency against a service that admits only K concurrent requests.

**Simulated, not measured on the local stack.** The controller decides once a minute, so a
fair comparison needs a run of many minutes at a service's pace (hundreds of thousands of
pushes): hours of real time on the local stack, which has no CloudWatch metrics either. So the
forwarder's event source and the service run here in virtual time (a discrete-event
simulation, seeded, a few seconds of CPU), while everything that decides is the project's own
code: the AIMD controller and its per-job settings (`AimdController`, `AimdSettings.for_job`),
the forwarder's backoff (`backoff_seconds`, with its default base and cap) and the job's
declared batch size, maximum concurrency and attempts.

The model:

* the event source starts a batch (up to `batch_size` ready messages) whenever fewer batches
  than the cap are in flight; a message's receive is an attempt (`max_attempts` then FAILED);
* a batch pushes its messages at once; the service admits a push while fewer than `slots`
  are being served (each takes `service_s`, +-20 % uniform jitter), else answers 429 with
  `Retry-After: retry_after_s` at once (`reject_s`);
* a batch ends when its last answer is in, plus `batch_overhead_s` (the forwarder's CPU per
  batch, `make bench` P2); a 429's message comes back after `backoff_seconds(...)`;
* static: the cap stays at the job's declared `max_concurrency`; adaptive: the controller sees
  each minute's pushes, 429s and p90 batch time, and its decision applies to the next batch
  started (on AWS a mapping update takes effect within about a minute: not modelled).
"""

from __future__ import annotations

import heapq
import inspect
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from microprocess.control.adaptive import AimdController, AimdSettings, Signals
from microprocess.declarations import JobDeclaration
from microprocess.pipeline.forwarder import Forwarder
from microprocess.pipeline.resend import backoff_seconds

LABEL = "P7 adaptive vs static concurrency (SIMULATED in virtual time, not measured on the local stack)"
METHOD = (
    "Discrete-event simulation in virtual time (bench.adaptive): the job's event source (declared batch size, "
    "maximum concurrency, attempts) and a service that admits K concurrent pushes and answers 429 Retry-After "
    "above; the project's own AimdController (AimdSettings.for_job, one decision per simulated minute from that "
    "minute's pushes, 429s and p90 batch time) and the forwarder's backoff_seconds. Static = the declared "
    "maximum throughout; adaptive = the controller, starting at the same maximum. Not a local-stack measurement: "
    "a fair run lasts many controller minutes."
)
_FORWARDER_DEFAULTS = inspect.signature(Forwarder.__init__).parameters
RETRY_BASE_S = float(_FORWARDER_DEFAULTS["retry_base_s"].default)
RETRY_CAP_S = float(_FORWARDER_DEFAULTS["retry_cap_s"].default)


@dataclass(frozen=True)
class Scenario:
    """The service and the run.

    Attributes:
        items: tasks in the run.
        slots: K, the pushes the service serves at once (429 above).
        service_s: time of a served push, s.
        reject_s: time of a 429 answer, s.
        retry_after_s: the 429's Retry-After, s.
        batch_overhead_s: the forwarder's own time per batch, s.
        interval_s: the controller's interval, s.
        seed: of the jitter.
    """

    items: int = 200_000
    slots: int = 100
    service_s: float = 0.5
    reject_s: float = 0.01
    retry_after_s: float = 1.0
    batch_overhead_s: float = 0.04
    interval_s: float = 60.0
    seed: int = 7


@dataclass
class Outcome:
    """One simulated run."""

    mode: str
    items: int
    wall_s: float = 0.0
    succeeded: int = 0
    failed: int = 0
    pushes: int = 0
    rejected: int = 0
    busy_s: float = 0.0  # push-seconds the service served
    caps: list[int] = field(default_factory=list)  # the cap in force during each interval
    succeeded_at: list[float] = field(default_factory=list, repr=False)  # when each success came in

    @property
    def rejected_per_1000(self) -> float:
        return 1000.0 * self.rejected / self.items

    def time_to_succeed(self, n: int) -> float | None:
        """When the n-th task SUCCEEDED (None: fewer succeeded)."""
        return self.succeeded_at[n - 1] if 0 < n <= len(self.succeeded_at) else None

    def busy(self, slots: int) -> float:
        """The service's busy share over the run: served push-seconds / (slots x wall time)."""
        return self.busy_s / (slots * self.wall_s) if self.wall_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        figures = {k: v for k, v in asdict(self).items() if k not in ("succeeded_at", "busy_s")}
        return {**figures, "rejected_per_1000_items": round(self.rejected_per_1000, 1)}


def _p90(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def simulate(job: JobDeclaration, scenario: Scenario, *, adaptive: bool) -> Outcome:
    """One run of `scenario.items` tasks of `job`, static or adaptive (same declared maximum)."""
    rng = random.Random(scenario.seed)
    out = Outcome("adaptive" if adaptive else "static", scenario.items)
    controller = AimdController(AimdSettings.for_job(job)) if adaptive else None
    cap = job.max_concurrency
    if controller is not None:  # the controller ticked while the job was idle before the run
        cap = controller.decide(cap, Signals(0, interval_s=scenario.interval_s)).concurrency
    ready: list[tuple[float, int, int]] = [(0.0, i, 0) for i in range(scenario.items)]  # (ready at, task, receives)
    events: list[tuple[float, int, str, Any]] = []  # (time, seq, kind, payload)
    seq = 0

    def schedule(at: float, kind: str, payload: Any = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, kind, payload))

    in_service = in_flight = 0
    interval_pushes = interval_throttled = 0
    interval_batches: list[float] = []
    next_poll: float | None = None
    schedule(scenario.interval_s, "tick")
    now = 0.0

    def start_batches() -> None:
        nonlocal in_service, in_flight, next_poll, interval_pushes, interval_throttled
        while in_flight < cap and ready and ready[0][0] <= now:
            messages = [heapq.heappop(ready) for _ in range(min(job.batch_size, len(ready))) if ready[0][0] <= now]
            answers: list[tuple[int, int, bool]] = []  # (task, attempt, admitted)
            end = now
            for _, task, receives in messages:
                attempt = receives + 1
                admitted = in_service < scenario.slots
                if admitted:
                    in_service += 1
                    took = scenario.service_s * rng.uniform(0.8, 1.2)
                    out.busy_s += took
                    schedule(now + took, "free")
                else:
                    took = scenario.reject_s
                    interval_throttled += 1
                    out.rejected += 1
                end = max(end, now + took)
                answers.append((task, attempt, admitted))
            out.pushes += len(messages)
            interval_pushes += len(messages)
            in_flight += 1
            schedule(end + scenario.batch_overhead_s, "done", (now, answers))
        if ready and in_flight < cap and ready[0][0] > now and (next_poll is None or next_poll > ready[0][0]):
            next_poll = ready[0][0]
            schedule(next_poll, "poll")

    start_batches()
    while out.succeeded + out.failed < scenario.items:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "free":
            in_service -= 1
        elif kind == "poll":
            next_poll = None
        elif kind == "done":
            started, answers = payload
            in_flight -= 1
            interval_batches.append(1000.0 * (now - started))
            for task, attempt, admitted in answers:
                if admitted:
                    out.succeeded += 1
                    out.succeeded_at.append(now)
                elif attempt >= job.max_attempts:
                    out.failed += 1
                else:
                    delay = backoff_seconds(
                        attempt, scenario.retry_after_s, base=RETRY_BASE_S, cap=RETRY_CAP_S, rng=rng
                    )
                    heapq.heappush(ready, (now + delay, task, attempt))
            out.wall_s = now
        elif kind == "tick":
            out.caps.append(cap)
            if controller is not None:
                signals = Signals(interval_pushes, interval_throttled, _p90(interval_batches), scenario.interval_s)
                cap = controller.decide(cap, signals).concurrency
            interval_pushes = interval_throttled = 0
            interval_batches = []
            schedule(now + scenario.interval_s, "tick")
        start_batches()
    return out


def compare(job: JobDeclaration, scenario: Scenario | None = None) -> dict[str, Any]:
    """Static and adaptive on the same scenario, the two ratios the aim is stated in, and the same
    work's time: static's wall time is short only because its failed tasks end early, so the
    adaptive run is also timed to the moment it has as many tasks SUCCEEDED as the static run."""
    scenario = scenario or Scenario()
    static = simulate(job, scenario, adaptive=False)
    adaptive = simulate(job, scenario, adaptive=True)
    same_work = adaptive.time_to_succeed(static.succeeded)
    static_same_work = static.time_to_succeed(static.succeeded)
    return {
        "label": LABEL,
        "method": METHOD,
        "job": job.name,
        "declared": {
            "max_concurrency": job.max_concurrency,
            "batch_size": job.batch_size,
            "max_attempts": job.max_attempts,
        },
        "scenario": asdict(scenario),
        "static": static.as_dict(),
        "adaptive": adaptive.as_dict(),
        "rejected_ratio": round(static.rejected / adaptive.rejected, 1) if adaptive.rejected else None,
        "wall_time_ratio": round(adaptive.wall_s / static.wall_s, 3),
        # The same work: the time at which each run had static's number of tasks SUCCEEDED.
        "same_work": {
            "succeeded": static.succeeded,
            "static_s": None if static_same_work is None else round(static_same_work, 1),
            "adaptive_s": None if same_work is None else round(same_work, 1),
            "ratio": round(same_work / static_same_work, 3) if same_work and static_same_work else None,
        },
        "service_busy": {
            "static": round(static.busy(scenario.slots), 3),
            "adaptive": round(adaptive.busy(scenario.slots), 3),
        },
        # The least time the service itself allows (every slot busy, no 429): a bound for both runs.
        "service_bound_s": round(scenario.items * scenario.service_s / scenario.slots, 1),
        "aim": ">= 5x fewer rejected pushes at <= 1.1x wall time",
        "aim_met": {
            "wall_time": bool(p7_ratio_ok(static, adaptive, adaptive.wall_s / static.wall_s)),
            "same_work": bool(
                same_work and static_same_work and p7_ratio_ok(static, adaptive, same_work / static_same_work)
            ),
        },
    }


def p7_ratio_ok(static: Outcome, adaptive: Outcome, time_ratio: float) -> bool:
    """The issue's aim: >= 5x fewer rejected pushes at <= 1.1x the time."""
    return adaptive.rejected * 5 <= static.rejected and time_ratio <= 1.1


def lines(p7: dict[str, Any]) -> list[tuple[str, str]]:
    """The bench table's rows for P7."""
    s, a, sc = p7["static"], p7["adaptive"], p7["scenario"]
    sw, busy = p7["same_work"], p7["service_busy"]
    rejected = f"{p7['rejected_ratio']}x fewer" if p7["rejected_ratio"] is not None else "none adaptive"
    return [
        ("P7 (SIMULATED)", f"{p7['job']} x {sc['items']:,} items, service admits {sc['slots']} pushes at once "),
        (
            "P7 static",
            f"{s['rejected_per_1000_items']:,.0f} rejected pushes / 1,000 items, {s['wall_s']:,.0f} s, "
            f"{s['failed']:,} tasks FAILED (cap {p7['declared']['max_concurrency']})",
        ),
        (
            "P7 adaptive",
            f"{a['rejected_per_1000_items']:,.1f} rejected pushes / 1,000 items, {a['wall_s']:,.0f} s, "
            f"{a['failed']:,} tasks FAILED (caps {a['caps'][:8]}...)",
        ),
        (
            "P7 ratio",
            f"{rejected}, wall time x{p7['wall_time_ratio']:.2f}  (aim: >= 5x fewer at <= 1.1x: "
            f"{_met(p7['aim_met']['wall_time'])}); the service's own bound {p7['service_bound_s']:,.0f} s",
        ),
        (
            "P7 same work",
            f"{sw['succeeded']:,} tasks SUCCEEDED: static {_s(sw['static_s'])}, adaptive {_s(sw['adaptive_s'])}"
            + (f" (x{sw['ratio']:.2f}, aim {_met(p7['aim_met']['same_work'])})" if sw["ratio"] is not None else "")
            + f"; service busy {busy['static']:.0%} static, {busy['adaptive']:.0%} adaptive",
        ),
    ]


def _met(met: bool) -> str:
    return "met" if met else "MISSED"


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:,.0f} s"


RESULTS = Path(__file__).resolve().parent / "results" / "adaptive-latest.json"


def main() -> int:
    """`python -m bench.adaptive`: P7 alone (seconds), printed and written to `RESULTS`
    (`make bench` adds the same figures to `latest.json`)."""
    from tests.declared import CREDIT_SCORES  # the job bench.run measures too

    result = compare(CREDIT_SCORES)
    for key, value in lines(result):
        print(f"{key:<16} {value}")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
