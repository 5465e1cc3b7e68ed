"""P9 measured: one service at capacity K shared by three jobs (weights 2:1, then a short third), on the local stack.

    .venv/bin/python -m bench.fair_share_local [--slots 48] [--service-ms 3000] [--interval 3] [--shed 120]

Its own local stack (`BenchStack`), deployed from a declaration file written for it
(`p9_declarations`): the project's own, with `capacity = { concurrent_pushes = K }` on the
`scores` service and three jobs pushing to it, `p9-heavy` (weight 2), `p9-light` (weight 1) and
`p9-short` (weight 1, fewer items), each with inline items and `batch_size` 4. The forwarder
is pointed at a bench service whose task endpoint admits K pushes at once and answers 429
above (`bench.noop_service.admit`). The service's controller (`ServiceShare`) ticks every
`interval` seconds in this process (on AWS, a minute in the scheduled function).

Measured: the service's rejected pushes (429s: a push above K) and the most pushes the caps
allowed at once; each job's completions over time (the ledger, polled every second), from
which the shares while every started job is busy, and Jain's index of the weight-normalised
throughputs; when the short job's first task completed after its start; tasks FAILED; the
wall time against the service's own bound (total work / K: items x service time / K).

With `--shed S`: a second phase, one run of `p9-light` during which the service answers 503
`Retry-After: S` to every push for S seconds: no task FAILED, no attempt counted (every
task at attempt 1), and the first push admitted after the shedding ends, against the interval.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.adaptive_local import admission, start_admission_service
from bench.harness import (
    APPEAR_WITHIN_S,
    BenchError,
    BenchStack,
    Echo,
    Loop,
    echo_stderr,
    wait_until_ended,
    write_figures,
)
from bench.noop_service import SHED_PATH
from microprocess.control.adaptive import Signals
from microprocess.control.scale import JobScaler
from microprocess.control.service_controller import ServiceShare, ServiceState
from microprocess.declarations import DECLARATIONS_ENV, load_declarations
from microprocess.ledger import Ledger
from microprocess.local.workspace import project_root

SLOTS = 48
SERVICE_MS = 3000.0
INTERVAL_S = 3.0
BATCH_SIZE = 4
ITEMS = {"p9-heavy": 1200, "p9-light": 600, "p9-short": 120}
WEIGHTS = {"p9-heavy": 2, "p9-light": 1, "p9-short": 1}
SHORT_AFTER_S = 30.0
SHED_S = 120.0
METHOD = (
    "bench.fair_share_local: its own local stack deployed from the project's declarations plus a capacity of K "
    "pushes at once on the scores service and three jobs on it (p9-heavy weight 2, p9-light weight 1, p9-short "
    "weight 1 started later; inline items, batch_size 4); the forwarder pointed at a bench service admitting K "
    "pushes at once (429 above, each admitted push served in a fixed time); the service's controller "
    "(ServiceShare) ticked every few seconds in the bench process; completions per job from the ledger every "
    "second; shares and Jain's index over the window where every started job was busy; then one run of p9-light "
    "during which the service answers 503 Retry-After for as long as it asks (shedding). Differs from AWS: the "
    "controller's interval is seconds, not a minute."
)
RESULTS = Path(__file__).resolve().parent / "results" / "fair-share-local-latest.json"

JOB = """
[jobs.{name}]
description = "P9 bench job (weight {weight})"
service = "scores"
schedule = "rate(1 day)"
source = {{ kind = "inline" }}
item_id_field = "company_id"
task_path = "/tasks/credit-score"
max_concurrency = 20
batch_size = {batch}
shard_count = 4
counter_count = 2
task_timeout_s = 10.0
weight = {weight}
stop_early = false
"""


def p9_declarations(slots: int) -> Path:
    """The project's declaration file with the `scores` service declared at `slots` pushes at once
    and the three P9 jobs; written beside the project's own file."""
    text = (project_root() / "microprocess.toml").read_text()
    marker = 'local_app = "microservice.main:app"\n'
    if marker not in text:
        raise RuntimeError("microprocess.toml has no [services.scores] local_app line to add a capacity after")
    text = text.replace(marker, marker + f"capacity = {{ concurrent_pushes = {slots} }}\n", 1)
    text += "".join(JOB.format(name=name, weight=weight, batch=BATCH_SIZE) for name, weight in WEIGHTS.items())
    # beside the project's own file: its services (`local_app`) resolve from the file's folder
    path = project_root() / ".bench-p9.toml"
    path.write_text(text)
    load_declarations(path)  # refuse a bad file here, not in the deploy
    return path


def run_id(job: str, phase: str, stamp: str) -> str:
    """A bench run's id: its job's name first (the deployed splitter refuses others: `run_keys`)."""
    return f"{job}-bench-{phase}-{stamp}"


def start(bs: BenchStack, job: str, run_id: str, n: int) -> None:
    items = [{"company_id": f"{job}-{i:05d}"} for i in range(n)]
    resp = bs.client("lambda").invoke(
        FunctionName=bs.functions["splitter"],
        InvocationType="Event",
        Payload=json.dumps({"job": job, "run_id": run_id, "source": "manual", "items": items}).encode(),
    )
    if resp.get("StatusCode") != 202:
        raise RuntimeError(f"the splitter did not accept the start of {job} (HTTP {resp.get('StatusCode')})")


def jain(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    if not values or not any(values):
        return None
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def busy_shares(samples: list[dict[str, Any]], jobs: list[str], expected: dict[str, int]) -> dict[str, Any]:
    """Throughputs (tasks/s) of `jobs` over the window where all of them had started and none had finished."""
    window = [s for s in samples if all(0 < s["done"][j] < expected[j] for j in jobs)]
    if len(window) < 2:
        return {"window_s": 0.0}
    first, last = window[0], window[-1]
    span = last["t"] - first["t"]
    rates = {j: (last["done"][j] - first["done"][j]) / span for j in jobs} if span > 0 else {}
    normalised = [rates[j] / WEIGHTS[j] for j in jobs] if rates else []
    return {
        "window_s": round(span, 1),
        "rates": {j: round(r, 2) for j, r in rates.items()},
        "jain_weight_normalised": round(jain(normalised) or 0.0, 4),
    }


def busy_slots(in_flight: list[tuple[float, int]], slots: int, start: float, end: float) -> dict[str, Any]:
    """Where the K slots sat idle: the service's mean pushes in flight over the whole (first start request
    to last run's end), before it first reached K, and after; slot-seconds idle in each part."""
    seen = [(t, n) for t, n in in_flight if start <= t <= end]
    if not seen:
        return {}
    full = next((t for t, n in seen if n >= slots), None)

    def part(lo: float, hi: float) -> dict[str, float]:
        values = [n for t, n in seen if lo <= t < hi]
        mean = sum(values) / len(values) if values else 0.0
        return {
            "s": round(hi - lo, 1),
            "mean_in_flight": round(mean, 1),
            "idle_slot_s": round((slots - mean) * (hi - lo)),
        }

    ramp_end = full if full is not None else end
    return {
        "whole": part(start, end),
        "until_first_full": part(start, ramp_end),
        "after_first_full": part(ramp_end, end),
    }


def measure(
    bs: BenchStack, *, slots: int, service_ms: float, interval_s: float, shed_s: float, echo: Echo
) -> dict[str, Any]:
    declared = bs.stack.declarations
    service = declared.services.get("scores")
    jobs = [declared.jobs.get(name) for name in ITEMS]
    on_service = [j for j in declared.jobs if j.service == service.name]
    url = start_admission_service(bs, slots, service_ms)
    bs.point_functions(counted=False, url=url)
    scaler = JobScaler(
        lambda_client=bs.client("lambda"),
        sqs=bs.client("sqs"),
        forwarder_function=bs.functions["forwarder"],
        job_queue_urls=json.loads(bs.outputs.get("JobQueueUrls") or "{}"),
    )
    ledger = Ledger(bs.outputs["LedgerTable"], client=bs.client("dynamodb"))
    share = ServiceShare(
        service=service,
        jobs=on_service,
        scaler=scaler,
        signals=lambda _job: Signals(pushes=0),
        state=ServiceState(bs.client("dynamodb"), bs.outputs["LedgerTable"]),
    )
    allowed: list[tuple[float, int, dict[str, int]]] = []
    t0 = time.time()

    def tick() -> None:
        load = share.tick()
        allowed.append((round(time.time() - t0, 1), load.allowed_pushes, dict(load.caps)))

    tick()  # every job idle: every mapping disabled before the runs start
    admission(url, reset=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    runs = {job.name: run_id(job.name, "p9", stamp) for job in jobs}
    started: dict[str, float] = {}
    samples: list[dict[str, Any]] = []

    created: dict[str, float] = {}  # when each run's record first appeared in the ledger (s from t0)

    def sample() -> None:
        done = {}
        for job in jobs:
            p = ledger.progress(runs[job.name]) if job.name in started and ledger.get_run(runs[job.name]) else None
            if p is not None:
                created.setdefault(job.name, time.time() - t0)
            done[job.name] = (p.succeeded + p.failed) if p else 0
        samples.append({"t": time.time() - t0, "done": done})

    in_flight: list[tuple[float, int]] = []  # the service's pushes in flight, every half second

    def probe() -> None:
        in_flight.append((round(time.time() - t0, 2), int(admission(url)["in_flight"])))

    echo(f"P9: service admits {slots} pushes at once ({service_ms:g} ms each), controller every {interval_s:g} s")
    with Loop(tick, interval_s) as ticker, Loop(sample, 1.0) as sampler, Loop(probe, 0.5):
        for job in jobs[:2]:
            started[job.name] = time.time() - t0
            start(bs, job.name, runs[job.name], ITEMS[job.name])
        time.sleep(SHORT_AFTER_S)
        started["p9-short"] = time.time() - t0
        start(bs, "p9-short", runs["p9-short"], ITEMS["p9-short"])
        ended = {}
        for job in jobs:
            run = wait_until_ended(ledger, runs[job.name], started=t0, timeout_s=1800, echo=echo, indent="  ")
            ended[job.name] = (run, time.time() - t0)
    counts = admission(url)
    expected = dict(ITEMS)
    short_first = next((s["t"] for s in samples if s["done"]["p9-short"] > 0), None)
    # The short job's mapping enabled (a cap > 0) by the first tick after its run's record appeared.
    short_enabled = next(
        (t for t, _, caps in allowed if caps.get("p9-short") and t >= created.get("p9-short", 1e9)), None
    )
    failed = {name: ledger.progress(runs[name]).failed for name in ITEMS}
    wall = max(t for _, t in ended.values()) - min(started.values())
    bound = sum(ITEMS.values()) * service_ms / 1000 / slots
    pair = busy_shares(samples, ["p9-heavy", "p9-light"], expected)
    trio = busy_shares(samples, list(ITEMS), expected)
    result: dict[str, Any] = {
        "label": "P9 one service, three jobs: capacity, fair share (MEASURED on the local stack)",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "slots": slots,
        "service_ms": service_ms,
        "interval_s": interval_s,
        "items": ITEMS,
        "weights": WEIGHTS,
        "rejected_pushes": int(counts["rejected"]),
        "admitted_pushes": int(counts["admitted"]),
        "peak_in_flight": int(counts["peak"]),
        "most_pushes_caps_allowed": max(a for _, a, _ in allowed),
        "caps": allowed,
        "shares_two_jobs": pair,
        "shares_three_jobs": trio,
        "short_started_s": round(short_first - started["p9-short"], 1) if short_first is not None else None,
        "short_run_created_s": round(created["p9-short"] - started["p9-short"], 1) if "p9-short" in created else None,
        "short_enabled_after_created_s": (
            round(short_enabled - created["p9-short"], 1) if short_enabled is not None else None
        ),
        "failed": failed,
        "statuses": {name: str(run.status) for name, (run, _) in ended.items()},
        "wall_s": round(wall, 1),
        "bound_s": round(bound, 1),
        "wall_over_bound": round(wall / bound, 3),
        "controller_errors": ticker.errors[:3] + sampler.errors[:3],
        "service_busy": busy_slots(in_flight, slots, min(started.values()), min(started.values()) + wall),
        "in_flight": in_flight,
    }
    echo("  " + json.dumps({k: v for k, v in result.items() if k != "caps"}))
    if shed_s > 0:
        result["shedding"] = measure_shedding(bs, url, ledger, tick, shed_s=shed_s, interval_s=interval_s, echo=echo)
    rates = pair.get("rates") or {}
    result["aim_met"] = {
        "within_k_plus_one_batch": result["most_pushes_caps_allowed"] <= slots + 1,
        "shares_2_to_1_within_10pct": bool(rates)
        and abs(rates["p9-heavy"] / max(rates["p9-light"], 1e-9) / 2 - 1) <= 0.10,
        "jain_at_least_0_95": (pair.get("jain_weight_normalised") or 0) >= 0.95,
        # its mapping enabled within one interval of its run appearing (+1 s: the ledger is sampled every second)
        "short_started_within_interval": result["short_enabled_after_created_s"] is not None
        and result["short_enabled_after_created_s"] <= interval_s + 1,
        "none_failed": not any(failed.values()),
        "wall_within_1_1x": result["wall_over_bound"] <= 1.1,
    }
    return result


def measure_shedding(
    bs: BenchStack, url: str, ledger: Ledger, tick: Any, *, shed_s: float, interval_s: float, echo: Echo
) -> dict[str, Any]:
    """One run of p9-light; `shed_s` seconds into it the service answers 503 Retry-After for `shed_s` seconds."""
    shed_run = run_id("p9-light", "p9-shed", time.strftime("%Y%m%dT%H%M%S"))
    n = ITEMS["p9-light"]
    t0 = time.time()
    with Loop(tick, interval_s):
        start(bs, "p9-light", shed_run, n)
        while ledger.get_run(shed_run) is None or ledger.progress(shed_run).succeeded < n // 4:
            if time.time() - t0 > APPEAR_WITHIN_S and ledger.get_run(shed_run) is None:
                raise BenchError(f"run {shed_run} has no record {APPEAR_WITHIN_S:.0f} s after its start")
            time.sleep(0.5)
        body = json.dumps({"seconds": shed_s, "retry_after": int(shed_s)}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{url}{SHED_PATH}", data=body), timeout=10) as resp:
            shed = json.loads(resp.read())
        echo(f"  the service sheds load for {shed_s:g} s (503 Retry-After: {int(shed_s)})")
        run = wait_until_ended(ledger, shed_run, started=t0, timeout_s=shed_s + 1800, echo=echo, indent="  ")
        ended = time.time()
    counts = admission(url)
    shards = run.shard_count
    attempts = sorted({t.attempts for k in range(shards) for t in ledger.iter_results(shed_run, k)})
    resumed = counts["first_after_shed"] - shed["shed_until"] if counts.get("first_after_shed") else None
    return {
        "shed_s": shed_s,
        "pushes_answered_503": int(counts["shed"]),
        "status": str(run.status),
        "failed": ledger.progress(shed_run).failed,
        "attempts_seen": attempts,
        "resumed_after_s": round(resumed, 1) if resumed is not None else None,
        # the rest of the run after the wait: its work left / K is the bound (a recount by the sweeper
        # during the wait once fenced the resumed completions off for 100 s more)
        "ended_after_shed_s": round(ended - shed["shed_until"], 1),
    }


def measure_standalone(
    *,
    slots: int = SLOTS,
    service_ms: float = SERVICE_MS,
    interval_s: float = INTERVAL_S,
    shed_s: float = SHED_S,
    echo: Echo,
) -> dict[str, Any]:
    """P9 on a local stack of its own, deployed from `p9_declarations` (started and stopped here)."""
    folder = project_root() / ".microprocess" / "bench-p9"
    before = os.environ.get(DECLARATIONS_ENV)
    os.environ[DECLARATIONS_ENV] = str(p9_declarations(slots))
    try:
        echo(f"P9: starting a local stack with the three P9 jobs on one service at capacity {slots} …")
        with BenchStack(items=100, echo=echo, workdir=folder / "work") as bs:
            return measure(bs, slots=slots, service_ms=service_ms, interval_s=interval_s, shed_s=shed_s, echo=echo)
    finally:
        if before is None:
            os.environ.pop(DECLARATIONS_ENV, None)
        else:
            os.environ[DECLARATIONS_ENV] = before


def lines(p9: dict[str, Any]) -> list[tuple[str, str]]:
    """The bench table's rows for P9."""
    met = p9["aim_met"]
    pair, trio = p9["shares_two_jobs"], p9["shares_three_jobs"]

    def ok(key: str) -> str:
        return "met" if met.get(key) else "MISSED"

    rows = [
        (
            "P9 capacity",
            f"local stack, service admits K = {p9['slots']} pushes at once ({p9['service_ms']:g} ms each), jobs "
            f"{p9['items']} weights {p9['weights']}, controller every {p9['interval_s']:g} s (AWS: a minute); "
            f"caps allowed at most {p9['most_pushes_caps_allowed']} pushes "
            f"(<= K + 1 batch: {ok('within_k_plus_one_batch')}), "
            f"{p9['rejected_pushes']} pushes answered 429",
        ),
        (
            "P9 shares",
            f"2 jobs busy: {pair.get('rates')} tasks/s over {pair.get('window_s')} s, "
            f"Jain {pair.get('jain_weight_normalised')} "
            f"(2:1 within 10 %: {ok('shares_2_to_1_within_10pct')}, Jain >= 0.95: {ok('jain_at_least_0_95')}); "
            f"3 jobs busy: {trio.get('rates')}, Jain {trio.get('jain_weight_normalised')}",
        ),
        (
            "P9 short job",
            f"its mapping enabled {p9.get('short_enabled_after_created_s')} s after its run appeared "
            f"({p9.get('short_run_created_s')} s after the start request; one interval: "
            f"{ok('short_started_within_interval')}), first task done {p9['short_started_s']} s after the start; "
            f"FAILED {p9['failed']} ({ok('none_failed')}); wall {p9['wall_s']} s vs total work / K "
            f"{p9['bound_s']} s: x{p9['wall_over_bound']} (<= 1.1x: {ok('wall_within_1_1x')})",
        ),
    ]
    shed = p9.get("shedding")
    if shed:
        rows.append(
            (
                "P9 shedding",
                f"503 Retry-After: {shed['shed_s']:g} for {shed['shed_s']:g} s mid-run: {shed['pushes_answered_503']} "
                f"pushes answered 503, {shed['status']}, {shed['failed']} FAILED, "
                f"attempts seen {shed['attempts_seen']}, "
                f"first push admitted {shed['resumed_after_s']} s after the shedding ended, "
                f"the run ended {shed.get('ended_after_shed_s')} s after it",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="P9 measured on its own local stack (capacity, fair share, shedding).")
    parser.add_argument("--slots", type=int, default=SLOTS, help="K: the service's capacity and its admission")
    parser.add_argument("--service-ms", type=float, default=SERVICE_MS)
    parser.add_argument("--interval", type=float, default=INTERVAL_S)
    parser.add_argument("--shed", type=float, default=SHED_S, help="the shedding phase's seconds (0: skip it)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    result = measure_standalone(
        slots=args.slots, service_ms=args.service_ms, interval_s=args.interval, shed_s=args.shed, echo=echo_stderr
    )
    write_figures(args.out, result, lines(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
