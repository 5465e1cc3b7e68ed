"""End to end on a local stack (IAM enforced) whose `reminders` service is declared `isolated_forwarder = true`
(issue 27, item 8): invoice-reminders' tasks go through a forwarder function of their own, whose role reads the
reminders signing secret only, and its run ends SUCCEEDED with every task pushed and recorded.

The repository's declarations with that one line added; the stack's calls are not recorded for the cloud
check of `test_local_e2e_calls.py` (its functions are not those of the repository's template, which
`tests/test_infra_isolated_forwarder.py` checks offline instead).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from microprocess.local import LocalStack, LocalState, UpOptions
from tests.local_e2e_support import cli_json, invoices_file, module_stack, stack_ledger
from tests.test_infra_isolated_forwarder import declarations_file
from tests.test_infra_synth import ROOT

pytestmark = pytest.mark.e2e

INVOICES = 40
RUN_TIMEOUT_S = "120"


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    # beside the repository's own file (its services, `microservice`, resolve from the file's folder)
    file = declarations_file(
        ROOT, {"reminders": "isolated_forwarder = true\n"}, name=f".e2e-isolated-{os.getpid()}.toml"
    )
    with module_stack("isolated", UpOptions(items=10, seed=13), workdir_env=True, declarations_file=file) as stack:
        yield stack


def task_forwarders(state: LocalState) -> dict[str, list[str]]:
    """Each deployed task forwarder function by name: the services of its SERVICE_ENDPOINTS."""
    lam = state.client("lambda")
    found: dict[str, list[str]] = {}
    for page in lam.get_paginator("list_functions").paginate():
        for fn in page["Functions"]:
            if fn.get("Handler") == "functions.forwarder.handler.lambda_handler":
                variables = (fn.get("Environment") or {}).get("Variables") or {}
                found[fn["FunctionName"]] = sorted(json.loads(variables.get("SERVICE_ENDPOINTS", "{}")))
    return found


def test_a_job_of_an_isolated_service_runs_on_its_own_forwarder_and_succeeds(stack: LocalStack, tmp_path: Path) -> None:
    state = stack.state
    assert state is not None
    # GIVEN two task forwarders: the shared one (scores) and reminders' own
    forwarders = task_forwarders(state)
    (own,) = [name for name, services in forwarders.items() if services == ["reminders"]]
    assert sorted(forwarders.values()) == [["reminders"], ["scores"]]
    # AND invoice-reminders' queue is consumed by reminders' own forwarder only
    queue_url = json.loads(state.outputs["JobQueueUrls"])["invoice-reminders"]
    arn = state.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
    mappings = state.client("lambda").list_event_source_mappings(EventSourceArn=arn["QueueArn"])["EventSourceMappings"]
    assert [m["FunctionArn"].rsplit(":", 1)[-1] for m in mappings] == [own]
    # WHEN a run of invoice-reminders runs with IAM enforced
    items = invoices_file(tmp_path / "invoices.jsonl", INVOICES)
    started, final = cli_json(
        "run", "invoice-reminders", "--items", str(items), "--wait", "--json", "--timeout", RUN_TIMEOUT_S
    )
    # THEN it SUCCEEDED with every task pushed (signed with the secret only its forwarder may read) and recorded
    assert started["run_id"] == final["run_id"]
    assert (final["status"], final["expected"], final["succeeded"], final["failed"]) == (
        "SUCCEEDED",
        INVOICES,
        INVOICES,
        0,
    ), final
    ledger = stack_ledger(state)
    results = [
        t
        for k in range(ledger.require_run(final["run_id"]).shard_count)
        for t in ledger.iter_results(final["run_id"], k)
    ]
    assert len(results) == INVOICES and all(t.result and t.result.get("reminded") for t in results)
