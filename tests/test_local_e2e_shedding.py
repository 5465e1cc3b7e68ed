"""End to end on a real local stack: the service sheds load for two minutes mid-run (503 with
`Retry-After` the seconds left, to every push), and the platform waits (issue 29, item 4).

The `scores` queue clone answers its first 150 task pushes, then 503 `Retry-After: <seconds left>`
to every push for 120 s (`microservice/chaos.py`, `shed_after_requests`/`shed_s`): a `Retry-After`
of at least the service's `shed_after_s` (60 s by default) asks every job to wait. The run must
end SUCCEEDED with no task FAILED and no attempt counted; while the wait holds, no push reaches
the service and `microprocess services` / `status` say "asked to wait until T"; the pushes resume
within one interval of its end, and the run ends soon after (the sweeper, which recounts a run
quiet for 45 s here and sweeps every minute, so at least once during a 2-minute wait, must not
take a run that waits for its service for a stuck one: a recount fences the completions that
resume after it off until the next recount, and the run then ends a minute or more late).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from microprocess.ledger import Ledger, RunStatus, TaskState
from microprocess.local import LocalStack, LocalState, UpOptions
from tests.declared import CREDIT_SCORES
from tests.local_e2e_support import chaos_stats, cli_json, cli_run, module_stack, stack_ledger, stack_state

pytestmark = pytest.mark.e2e

COMPANIES = 600
SHED_AFTER_REQUESTS = 150
SHED_S = 120.0  # >= the service's default shed_after_s (60 s): a wait for every job
#: How soon the pushes resume after the wait: a forwarder trusts its read of the mark for 2 s, and
#: a task held for the wait arrives up to 2 s after its end (jitter), then its batch is pushed.
RESUME_WITHIN_S = 6.0
#: The run's 450 tasks left take ~20 s here once the pushes resume; a recount during the wait
#: made it end at the sweeper's next recount (45 s quiet, swept every minute) instead.
ENDED_WITHIN_S = 40.0
TERMINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    chaos = Path(tmp_path_factory.mktemp("shedding")) / "chaos.json"
    chaos.write_text(json.dumps({"seed": 29, "shed_after_requests": SHED_AFTER_REQUESTS, "shed_s": SHED_S}))
    with module_stack("shedding", UpOptions(items=COMPANIES, seed=29, chaos=chaos), workdir_env=True) as stack:
        yield stack


@pytest.fixture(scope="module")
def state(stack: LocalStack) -> LocalState:
    return stack_state(stack)


@pytest.fixture(scope="module")
def ledger(state: LocalState) -> Ledger:
    return stack_ledger(state)


def wait_for(what: str, check: Any, timeout_s: float) -> Any:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout_s:g} s")


def test_a_service_shedding_load_for_two_minutes_pauses_every_push_fails_no_task_and_resumes_at_once(
    stack: LocalStack, state: LocalState, ledger: Ledger
) -> None:
    # WHEN credit-scores runs over its 600 companies and the service sheds load after 150 pushes
    [started] = cli_json("run", CREDIT_SCORES.name, "--json")
    run_id = started["run_id"]
    shedding = wait_for("the service shedding load", lambda: chaos_stats(state)["shedding"], 120)
    until = shedding["until"]
    # THEN the platform records the wait: `services --json` and `status` say until when (the mark
    # holds the first shed answer's time + its Retry-After: the window's end, within a second)
    view = wait_for(
        "the wait on the service's record",
        lambda: next((s for s in cli_json("services", "scores", "--json")[0]["services"] if s["wait_until"]), None),
        15,
    )
    recorded = datetime.fromisoformat(view["wait_until"].replace("Z", "+00:00")).timestamp()
    assert abs(recorded - until) <= 2.0, (view, until)
    assert "asked to wait until" in cli_run("status", run_id)
    # AND no push reaches the service while the wait holds (the batches in flight when it began
    # were answered within the first seconds)
    time.sleep(max(0.0, shedding["from"] + 8.0 - time.time()))
    during = chaos_stats(state)
    time.sleep(max(0.0, until - 5.0 - time.time()))
    assert chaos_stats(state)["requests"] == during["requests"], "pushes reached the service during its wait"
    held = ledger.progress(run_id)
    assert held.succeeded < COMPANIES and held.failed == 0
    # AND the run ends SUCCEEDED with every task, none FAILED, every task at its first counted attempt
    run = wait_for("the run's end", lambda: (r := ledger.require_run(run_id)).status in TERMINAL and r, 300)
    assert (run.status, ledger.progress(run_id).succeeded, ledger.progress(run_id).failed) == (
        RunStatus.SUCCEEDED,
        COMPANIES,
        0,
    )
    records = [t for s in range(run.shard_count) for t in ledger.iter_results(run_id, s)]
    assert len(records) == COMPANIES and all(t.state is TaskState.SUCCEEDED for t in records)
    assert all(t.attempts == 1 for t in records), sorted({t.attempts for t in records})
    # AND the fault fired: the pushes in flight when the shedding began were answered 503
    stats = chaos_stats(state)
    assert stats["injected"]["shed_503"] >= 1, stats
    # AND the pushes resumed within one interval of the wait's end, and the run ended soon after
    resumed = stats["shedding"]["first_request_after"]
    assert resumed is not None and resumed - until <= RESUME_WITHIN_S, (resumed - until, stats)
    assert run.finished_at is not None
    ended = datetime.fromisoformat(run.finished_at.replace("Z", "+00:00")).astimezone(UTC).timestamp()
    assert ended - until <= ENDED_WITHIN_S, f"the run ended {ended - until:.1f} s after the wait"
