"""End to end on a local stack (IAM enforced): the runs of one job share its queue fairly (issue 29,
item 2: "between concurrent runs of one job"; `microprocess.pipeline.tenants`, and the emulator's
fair-queue receive, `microprocess.local.fair_queue`).

One job, `fair-runs`, on the reminders service, declared in a file derived from the repository's
(`.e2e-fair-runs-<pid>.toml`, removed after) with a small event-source cap (2 batches of 5), so that
its queue holds a backlog:

* a big run (2,000 items) is started, then, once it is busy, a small one (40 items): the small run
  ends while the big one still has most of its work left (before fair queues it waited behind the
  big run's whole backlog);
* two runs of 1,500 started together share the job's throughput about equally; a normal run and a
  `--priority high` one (priority_weight 4: four tenants) about 1:4.

Shares are throughputs (tasks done per second, from the ledger every half second) over the window
where both runs had started and neither had finished, less its first `SETTLE_S` seconds: a run that
starts is a quiet tenant until its share of the recent processing time passes 10 %, so it is served
first at the start (on AWS too); how long depends on the machine's load (1.7 s in a `make test`
with two stacks at once, when the high run took 200 tasks to the normal run's 10 and the whole
window's ratio was 7.3 for an aim of 4; 4.3 without those first 2 s). Their tolerance, 1.5x either
way of the aim (2.67 to 6 for 4:1, 0.67 to 1.5 for 1:1): the event source holds 10 messages in
flight (2 batches of 5), so a normal run beside a high one holds 2 of them and one message more or
less moves its share by half.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest

from microprocess.ledger import Ledger, RunStatus
from microprocess.local import LocalStack, UpOptions
from tests.local_e2e_support import module_stack, stack_ledger
from tests.test_infra_synth import ROOT

pytestmark = pytest.mark.e2e

JOB = "fair-runs"
PRIORITY_WEIGHT = 4
JOB_TOML = f"""
[jobs.{JOB}]
description = "Fair share between the runs of one job (e2e)"
service = "reminders"
schedule = "rate(1 day)"
source = {{ kind = "inline" }}
item_id_field = "invoice_id"
task_path = "/tasks/remind"
max_concurrency = 2
batch_size = 5
shard_count = 4
counter_count = 2
max_attempts = 3
task_timeout_s = 5.0
stop_early = false
priority_weight = {PRIORITY_WEIGHT}
"""
TERMINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
BIG, SMALL, PAIR = 2000, 40, 1500
#: The start of the both-busy window left out of the shares: the run that starts second is a quiet
#: tenant, served first, until its share of the recent processing time passes 10 % (module docstring).
SETTLE_S = 2.0
TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    file = ROOT / f".e2e-fair-runs-{os.getpid()}.toml"  # beside the repository's: its services resolve
    file.write_text((ROOT / "microprocess.toml").read_text() + JOB_TOML)
    with module_stack("fair-runs", UpOptions(items=10, seed=13), declarations_file=file) as stack:
        yield stack


def invoices(prefix: str, n: int) -> list[dict[str, Any]]:
    due = (date.today() - timedelta(days=10)).isoformat()
    return [{"invoice_id": f"{prefix[-6:]}{i:05d}", "customer": "C", "amount": 1, "due_date": due} for i in range(n)]


def start(stack: LocalStack, run_id: str, n: int, *, priority: str | None = None) -> None:
    """Start a run as `microprocess run` does (an asynchronous splitter invocation), items inline."""
    state = stack.state
    assert state is not None
    event: dict[str, Any] = {"job": JOB, "run_id": run_id, "source": "manual", "items": invoices(run_id, n)}
    if priority:
        event["priority"] = priority
    resp = state.client("lambda").invoke(
        FunctionName=state.outputs["SplitterFunctionName"], InvocationType="Event", Payload=json.dumps(event).encode()
    )
    assert resp["StatusCode"] == 202


@dataclass
class Watch:
    """The done counts of some runs, sampled every half second: (seconds, {run: done})."""

    ledger: Ledger
    runs: list[str]
    samples: list[tuple[float, dict[str, int]]]
    t0: float

    def sample(self) -> dict[str, int]:
        done = {}
        for run in self.runs:
            p = self.ledger.progress(run) if self.ledger.get_run(run) else None
            done[run] = (p.succeeded + p.failed) if p else 0
        self.samples.append((time.time() - self.t0, done))
        return done

    def until(self, ok: Any, what: str) -> dict[str, int]:
        while time.time() - self.t0 < TIMEOUT_S:
            done = self.sample()
            if ok(done):
                return done
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {TIMEOUT_S:.0f} s; last counts {self.samples[-1]}")

    def rates_while_both_busy(self, expected: dict[str, int], settle_s: float = SETTLE_S) -> dict[str, float]:
        busy = [(t, d) for t, d in self.samples if all(0 < d[r] < expected[r] for r in self.runs)]
        window = [(t, d) for t, d in busy if t >= busy[0][0] + settle_s] if busy else []
        assert len(window) >= 4, (
            f"the runs were both busy for {len(window)} samples after the first {settle_s:g} s only: {self.samples}"
        )
        (t1, first), (t2, last) = window[0], window[-1]
        return {r: (last[r] - first[r]) / (t2 - t1) for r in self.runs}


def ended(ledger: Ledger, run: str) -> bool:
    found = ledger.get_run(run)
    return found is not None and found.status in TERMINAL


def stamp() -> str:
    return time.strftime("%H%M%S")


def test_a_small_run_is_not_held_behind_a_big_run_of_the_same_job(stack: LocalStack) -> None:
    assert stack.state is not None
    ledger = stack_ledger(stack.state)
    big, small = f"{JOB}-big-{stamp()}", f"{JOB}-small-{stamp()}"
    watch = Watch(ledger, [big, small], [], time.time())
    # GIVEN a big run of the job, busy
    start(stack, big, BIG)
    watch.until(lambda d: d[big] >= 30, "the big run's first tasks")
    # WHEN a small run of the same job starts
    start(stack, small, SMALL)
    watch.until(lambda _d: ended(ledger, small), "the small run's end")
    at_end = watch.sample()[big]
    print(f"fair-runs: the small run ended {watch.samples[-1][0]:.1f} s in, the big one at {at_end} of {BIG}")
    # THEN it ends, every task done, while the big run still has most of its work left
    assert ledger.require_run(small).status is RunStatus.SUCCEEDED
    assert ledger.progress(small).succeeded == SMALL
    assert at_end < BIG / 2, f"the big run had done {at_end} of {BIG} when the small one ended"
    # (cancelled: its messages are acknowledged without a push; the next test starts on an empty queue)
    ledger.cancel(big)
    watch.until(lambda _d: queue_depth(stack) == 0, "the cancelled big run's messages drained")


def queue_depth(stack: LocalStack) -> int:
    """The job's task queue's messages: waiting, in flight and delayed."""
    assert stack.state is not None
    url = json.loads(stack.state.outputs["JobQueueUrls"])[JOB]
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    found = stack.state.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(found[n]) for n in names)


@pytest.mark.parametrize(("priority", "aim"), [(None, 1.0), ("high", float(PRIORITY_WEIGHT))])
def test_two_runs_of_one_job_share_it_by_their_priority(stack: LocalStack, priority: str | None, aim: float) -> None:
    assert stack.state is not None
    ledger = stack_ledger(stack.state)
    normal, other = f"{JOB}-normal-{stamp()}", f"{JOB}-{priority or 'second'}-{stamp()}"
    watch = Watch(ledger, [normal, other], [], time.time())
    # GIVEN two runs of one job started together, the second normal or --priority high
    start(stack, normal, PAIR)
    start(stack, other, PAIR, priority=priority)
    # WHEN both run until one has ended
    watch.until(lambda d: ended(ledger, normal) and ended(ledger, other), "both runs' end")
    # THEN while both were busy their throughputs were about 1:1, or 1:priority_weight for a high run
    rates = watch.rates_while_both_busy({normal: PAIR, other: PAIR})
    ratio = rates[other] / max(rates[normal], 1e-9)
    print(f"fair-runs {priority or 'normal'}: rates {rates}, ratio {ratio:.2f} (aim {aim:g})")
    assert aim / 1.5 <= ratio <= aim * 1.5, f"rates {rates}: ratio {ratio:.2f}, aim {aim:g}; samples {watch.samples}"
    assert ledger.require_run(other).tenants == (PRIORITY_WEIGHT if priority else 1)
    assert all(ledger.require_run(r).status is RunStatus.SUCCEEDED for r in (normal, other))
