"""Fair share between the runs of one job (SQS fair queues), measured on the local stack.

    .venv/bin/python -m bench.fair_runs_local [--big 3000] [--small 50] [--pair 1500] [--service-ms 100]

Its own local stack (`BenchStack`), deployed from a declaration file written for it
(`declarations`): the project's own plus one job, `fr-bench`, on the `scores` service, inline
items, 4 batches of 10 at once (40 messages in flight: above the 30 of AWS's concurrency-share
threshold); the forwarder is pointed at a bench service that answers each push after a fixed
`service_ms` (`bench.noop_service`, admitting every push). Four phases, each on an empty queue:

1. *alone*: the big run alone, then the small run alone (their times: the big run's is what a
   small run started at its beginning waited, before fair queues);
2. *small beside big*: the big run, and once it is busy the small one; the small run's time to its
   first task done and to its end, and how much of the big run was done when it ended;
3. *two normal runs* started together, and 4. *a normal and a `--priority high` run*: their
   throughputs (tasks/s, from the ledger every half second) over the window where both were busy,
   against 1:1 and 1:priority_weight.

Differs from AWS: the emulator's fair-queue receive (`microprocess.local.fair_queue`) follows the
documented thresholds; its processing-time window is ours (AWS does not publish it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.adaptive_local import start_admission_service
from bench.harness import BenchStack, Echo, echo_stderr, wait_until_ended, write_figures
from microprocess.declarations import DECLARATIONS_ENV, load_declarations
from microprocess.ledger import Ledger
from microprocess.local.workspace import project_root

JOB = "fr-bench"
BIG, SMALL, PAIR = 3000, 50, 1500
SERVICE_MS = 100.0
CONCURRENCY, BATCH_SIZE, PRIORITY_WEIGHT = 4, 10, 4
RESULTS = Path(__file__).resolve().parent / "results" / "fair-runs-local-latest.json"
METHOD = (
    "bench.fair_runs_local: its own local stack deployed from the project's declarations plus one job on the "
    f"scores service ({CONCURRENCY} batches of {BATCH_SIZE} at once, inline items, priority_weight "
    f"{PRIORITY_WEIGHT}); the forwarder pointed at a bench service answering every push after a fixed time; "
    "completions per run from the ledger every half second; phases on an empty queue: the big and the small run "
    "alone, the small run started once the big one is busy, two normal runs together, a normal and a high one."
)
JOB_TOML = f"""
[jobs.{JOB}]
description = "Fair runs bench job"
service = "scores"
schedule = "rate(1 day)"
source = {{ kind = "inline" }}
item_id_field = "company_id"
task_path = "/tasks/credit-score"
max_concurrency = {CONCURRENCY}
batch_size = {BATCH_SIZE}
shard_count = 4
counter_count = 2
task_timeout_s = 10.0
stop_early = false
priority_weight = {PRIORITY_WEIGHT}
"""


def declarations() -> Path:
    """The project's declaration file plus the bench job, written beside it (its services resolve)."""
    path = project_root() / ".bench-fair-runs.toml"
    path.write_text((project_root() / "microprocess.toml").read_text() + JOB_TOML)
    load_declarations(path)  # refuse a bad file here, not in the deploy
    return path


class Runs:
    """Starts runs of the bench job and samples their done counts every half second."""

    def __init__(self, bs: BenchStack, echo: Echo) -> None:
        self.bs, self.echo = bs, echo
        self.ledger = Ledger(bs.outputs["LedgerTable"], client=bs.client("dynamodb"))
        self.queue_url = json.loads(bs.outputs["JobQueueUrls"])[JOB]
        self.stamp = time.strftime("%H%M%S")

    def start(self, name: str, n: int, *, priority: str | None = None) -> tuple[str, float]:
        run_id = f"{JOB}-{name}-{self.stamp}"
        event: dict[str, Any] = {"job": JOB, "run_id": run_id, "source": "manual"}
        event["items"] = [{"company_id": f"{name[:3]}{i:06d}"} for i in range(n)]
        if priority:
            event["priority"] = priority
        resp = self.bs.client("lambda").invoke(
            FunctionName=self.bs.functions["splitter"], InvocationType="Event", Payload=json.dumps(event).encode()
        )
        if resp.get("StatusCode") != 202:
            raise RuntimeError(f"the splitter did not accept the start of {run_id}")
        return run_id, time.time()

    def done(self, run_id: str) -> int:
        if self.ledger.get_run(run_id) is None:
            return 0
        p = self.ledger.progress(run_id)
        return p.succeeded + p.failed

    def watch(self, runs: list[str], until: Callable[[dict[str, int]], bool]) -> list[tuple[float, dict[str, int]]]:
        samples: list[tuple[float, dict[str, int]]] = []
        deadline = time.time() + 900
        while time.time() < deadline:
            counts = {r: self.done(r) for r in runs}
            samples.append((time.time(), counts))
            if until(counts):
                return samples
            time.sleep(0.5)
        raise RuntimeError(f"runs {runs} did not get there in 900 s: {samples[-1]}")

    def ended(self, run_id: str, started: float) -> float:
        run = wait_until_ended(self.ledger, run_id, started=started, timeout_s=900, echo=self.echo, indent="  ")
        return round(time.time() - started, 1) if str(run.status) == "SUCCEEDED" else -1.0

    def drained(self) -> None:
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        sqs = self.bs.client("sqs")
        while sum(
            int(v)
            for v in sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=names)["Attributes"].values()
        ):
            time.sleep(0.5)
        time.sleep(6)  # the emulator's processing-time window (5 s) forgets the previous phase's runs


def first_done(samples: list[tuple[float, dict[str, int]]], run: str, started: float) -> float | None:
    return next((round(t - started, 1) for t, d in samples if d[run] > 0), None)


def shares(runs: Runs, pair: int, *, priority: str | None) -> dict[str, Any]:
    normal, _ = runs.start("normal" if priority else "first", pair)
    other, _ = runs.start(priority or "second", pair, priority=priority)
    samples = runs.watch([normal, other], lambda d: d[normal] >= pair or d[other] >= pair)
    window = [(t, d) for t, d in samples if all(0 < d[r] < pair for r in (normal, other))]
    runs.ended(normal, time.time())
    runs.ended(other, time.time())
    runs.drained()
    if len(window) < 2:
        return {"window_s": 0.0}
    (t1, a), (t2, b) = window[0], window[-1]
    rates = {"normal": (b[normal] - a[normal]) / (t2 - t1), priority or "second": (b[other] - a[other]) / (t2 - t1)}
    return {
        "window_s": round(t2 - t1, 1),
        "rates": {k: round(v, 1) for k, v in rates.items()},
        "ratio": round(rates[priority or "second"] / max(rates["normal"], 1e-9), 2),
        "aim": float(PRIORITY_WEIGHT) if priority else 1.0,
    }


def measure(
    bs: BenchStack, *, service_ms: float, echo: Echo, big_n: int = BIG, small_n: int = SMALL, pair: int = PAIR
) -> dict[str, Any]:
    url = start_admission_service(bs, 10_000, service_ms)  # every push admitted, each after service_ms
    bs.point_functions(counted=False, url=url)
    runs = Runs(bs, echo)
    echo(f"fair runs: {CONCURRENCY} x {BATCH_SIZE} in flight, {service_ms:g} ms per push")
    echo(f"  the big run ({big_n}) alone, then the small one ({small_n}) alone …")
    big, t = runs.start("bigalone", big_n)
    big_alone = runs.ended(big, t)
    runs.drained()
    small, t = runs.start("smallalone", small_n)
    small_alone_samples = runs.watch([small], lambda d: d[small] >= small_n)
    small_alone = {"first_task_s": first_done(small_alone_samples, small, t), "end_s": runs.ended(small, t)}
    runs.drained()
    echo("  the small run beside the big one …")
    big, t_big = runs.start("big", big_n)
    runs.watch([big], lambda d: d[big] >= 200)
    small, t_small = runs.start("small", small_n)
    samples = runs.watch([big, small], lambda d: d[small] >= small_n)
    small_end = runs.ended(small, t_small)
    beside = {
        "first_task_s": first_done(samples, small, t_small),
        "end_s": small_end,
        "big_done_at_small_end": runs.done(big),
        "big_end_s": runs.ended(big, t_big),
    }
    runs.drained()
    echo("  two normal runs, then a normal and a high one …")
    result: dict[str, Any] = {
        "label": "fair share between the runs of one job (MEASURED on the local stack)",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "in_flight": CONCURRENCY * BATCH_SIZE,
        "service_ms": service_ms,
        "items": {"big": big_n, "small": small_n, "pair": pair},
        "big_alone_s": big_alone,
        "small_alone": small_alone,
        "small_beside_big": beside,
        "two_normal": shares(runs, pair, priority=None),
        "normal_and_high": shares(runs, pair, priority="high"),
    }
    echo("  " + json.dumps(result))
    return result


def measure_standalone(*, service_ms: float = SERVICE_MS, echo: Echo, **sizes: int) -> dict[str, Any]:
    """On a local stack of its own, deployed from `declarations` (started and stopped here)."""
    before = os.environ.get(DECLARATIONS_ENV)
    file = declarations()
    os.environ[DECLARATIONS_ENV] = str(file)
    try:
        echo("fair runs: starting a local stack with the bench job …")
        with BenchStack(
            items=100, echo=echo, workdir=project_root() / ".microprocess" / "bench-fair-runs" / "work"
        ) as bs:
            return measure(bs, service_ms=service_ms, echo=echo, **sizes)
    finally:
        if before is None:
            os.environ.pop(DECLARATIONS_ENV, None)
        else:
            os.environ[DECLARATIONS_ENV] = before
        file.unlink(missing_ok=True)


def lines(r: dict[str, Any]) -> list[tuple[str, str]]:
    """The bench table's rows."""
    beside, alone = r["small_beside_big"], r["small_alone"]
    two, high = r["two_normal"], r["normal_and_high"]
    return [
        (
            "fair runs: small beside big",
            f"{r['items']['small']} items started while a {r['items']['big']}-item run of the same job was busy: "
            f"first task done {beside['first_task_s']} s, ended {beside['end_s']} s after its start (alone: "
            f"{alone['first_task_s']} / {alone['end_s']} s); the big run was at {beside['big_done_at_small_end']} of "
            f"{r['items']['big']} (alone it takes {r['big_alone_s']} s: what the small run waited before)",
        ),
        (
            "fair runs: shares",
            f"two normal runs {two.get('rates')} tasks/s ({two.get('ratio')}:1, aim 1:1, "
            f"over {two.get('window_s')} s); "
            f"normal and high {high.get('rates')} ({high.get('ratio')}:1, aim {high.get('aim')}:1, over "
            f"{high.get('window_s')} s); {r['in_flight']} in flight, {r['service_ms']:g} ms per push",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fair share between the runs of one job, on its own local stack.")
    parser.add_argument("--big", type=int, default=BIG)
    parser.add_argument("--small", type=int, default=SMALL)
    parser.add_argument("--pair", type=int, default=PAIR)
    parser.add_argument("--service-ms", type=float, default=SERVICE_MS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = measure_standalone(
        service_ms=args.service_ms, echo=echo_stderr, big_n=args.big, small_n=args.small, pair=args.pair
    )
    write_figures(args.out, result, lines(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
