"""End to end on a real local stack: a service that answers 429 (`Retry-After: 1`) to 30 % of the
pushes, and a run that ends with no task FAILED: throttling is the service asking to slow down,
not the task failing (ARCHITECTURE invariant 11, the job's `throttle_budget_s`).

Without the budget each 429 is an attempt: with 5 attempts, 0.3^5 of the tasks (about 5 in 2,000)
meet five 429s in a row and end FAILED."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from microprocess.ledger import Ledger, TaskState
from microprocess.local import LocalStack, LocalState, UpOptions
from microprocess.local.workspace import WORKDIR_ENV
from tests.declared import CREDIT_SCORES
from tests.local_e2e_support import chaos_stats, cli_json, module_stack, stack_ledger, stack_state

pytestmark = pytest.mark.e2e

COMPANIES = 2000
RATE_429 = 0.3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    chaos = Path(tmp_path_factory.mktemp("throttle")) / "chaos.json"
    chaos.write_text(json.dumps({"seed": 25, "rate_429": RATE_429, "retry_after_s": 1}))
    with module_stack("throttle", UpOptions(items=COMPANIES, seed=25, chaos=chaos)) as stack:
        yield stack


@pytest.fixture(scope="module")
def state(stack: LocalStack) -> LocalState:
    return stack_state(stack)


@pytest.fixture(scope="module")
def ledger(state: LocalState) -> Ledger:
    return stack_ledger(state)


def test_a_service_throttling_30_percent_of_pushes_fails_no_task(
    stack: LocalStack, state: LocalState, ledger: Ledger
) -> None:
    os.environ[WORKDIR_ENV] = str(stack.ws.workdir)
    try:
        # WHEN credit-scores runs over its table against a service that answers 429 to 30 % of pushes
        started, final = cli_json("run", CREDIT_SCORES.name, "--wait", "--json", "--timeout", "400")
    finally:
        os.environ.pop(WORKDIR_ENV, None)
    # THEN the fault fired: about 30 % of the task pushes were answered 429
    stats = chaos_stats(state)
    throttled = stats["injected"]["http_429"]
    assert throttled >= 0.2 * stats["requests"] and throttled >= 0.25 * COMPANIES, stats
    # AND the run SUCCEEDED with every task, none FAILED
    assert (final["status"], final["expected"], final["succeeded"], final["failed"]) == (
        "SUCCEEDED",
        COMPANIES,
        COMPANIES,
        0,
    ), final
    run_id = started["run_id"]
    records = [t for s in range(ledger.require_run(run_id).shard_count) for t in ledger.iter_results(run_id, s)]
    assert len(records) == COMPANIES and all(t.state is TaskState.SUCCEEDED for t in records)
    # AND the throttled pushes spent no attempt: every task SUCCEEDED at its first counted attempt
    assert all(t.attempts == 1 for t in records), sorted({t.attempts for t in records})
