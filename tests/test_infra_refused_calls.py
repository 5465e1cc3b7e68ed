"""The calls the cloud roles refused before (issue 24), each evaluated by the emulator's policy evaluator
on the synthesized cloud template: AccessDenied with the old role, allowed with the new one.

The bundled service's reduce (`scores-queue`) was allowed every ledger key; it is now allowed its own
jobs' runs only (`dynamodb:LeadingKeys`), and refused another job's.

The old role of the first two is the new one without the action the fix granted; the splitter's old
S3 grant was its one declared object (`invoice-manifests/unpaid.jsonl`), with nothing under a prefix.
"""

from __future__ import annotations

import pytest

from infra import permissions
from microprocess.declarations.run_keys import job_keys_pattern, run_id_refusal
from microprocess.pipeline.start import new_run_id
from tests.iam_policies import Template
from tests.test_infra_stacks import functions, role_of, service_roles
from tests.test_infra_synth import CLOUD, synthesized

pytestmark = pytest.mark.infra


def cloud() -> Template:
    return Template(synthesized().templates[CLOUD])


def test_the_splitter_may_write_a_jobs_item_index() -> None:
    # GIVEN invoice-reminders (item_index = true): the splitter writes its index with BatchWriteItem
    template, splitter = cloud(), role_of(functions(CLOUD)["splitter"])
    ledger = template.arn("LedgerTable")
    assert not template.without_action(splitter, "dynamodb:BatchWriteItem").allows(
        splitter, "dynamodb:BatchWriteItem", ledger
    )
    assert template.allows(splitter, "dynamodb:BatchWriteItem", ledger)
    # and nothing beyond the ledger
    assert not template.allows(splitter, "dynamodb:BatchWriteItem", template.arn("CompaniesTable"))


def test_the_sweepers_counter_repair_may_remove_its_marker() -> None:
    template, sweeper = cloud(), role_of(functions(CLOUD)["sweeper"])
    ledger = template.arn("LedgerTable")
    assert not template.without_action(sweeper, "dynamodb:DeleteItem").allows(sweeper, "dynamodb:DeleteItem", ledger)
    assert template.allows(sweeper, "dynamodb:DeleteItem", ledger)
    # the other functions may not delete ledger items
    for name in ("forwarder", "reducer", "dead_letter", "splitter"):
        assert not template.allows(role_of(functions(CLOUD)[name]), "dynamodb:DeleteItem", ledger), name


def test_the_splitter_reads_a_dated_manifest_under_its_declared_prefix_only() -> None:
    template, splitter = cloud(), role_of(functions(CLOUD)["splitter"])
    dated = "arn:aws:s3:::invoice-manifests/unpaid/2026-12-01.jsonl"
    # the old grant: the one object the job declared
    old = template.replacing(splitter, "invoice-manifests/unpaid/*", "invoice-manifests/unpaid.jsonl")
    assert old.allows(splitter, "s3:GetObject", "arn:aws:s3:::invoice-manifests/unpaid.jsonl")
    assert not old.allows(splitter, "s3:GetObject", dated)
    assert template.allows(splitter, "s3:GetObject", dated)
    # outside the prefix (another folder, another bucket) stays refused; so does any other action
    assert not template.allows(splitter, "s3:GetObject", "arn:aws:s3:::invoice-manifests/secrets/keys.jsonl")
    assert not template.allows(splitter, "s3:GetObject", "arn:aws:s3:::other-bucket/unpaid/2026-12-01.jsonl")
    assert not template.allows(splitter, "s3:PutObject", dated)
    assert not template.allows(splitter, "s3:ListBucket", "arn:aws:s3:::invoice-manifests")


def test_the_bundled_services_reduce_reaches_its_own_jobs_runs_only() -> None:
    # GIVEN the scores-queue role (credit-scores reduces with its service: reads the run, its counters and
    # shards, claims the email) WHEN it touches the ledger THEN only keys of credit-scores runs are allowed
    template, queue = cloud(), service_roles(CLOUD)["scores-queue"]
    ledger = template.arn("LedgerTable")
    own = "RUN#credit-scores-20261201T020000Z"
    other = "RUN#invoice-reminders-20261201T080000Z"
    for action in permissions.SERVICE_REDUCE_LEDGER:
        assert template.allows(queue, action, ledger, leading_keys=[own]), action
        assert template.allows(queue, action, ledger, leading_keys=[f"{own}#S3", f"{own}#C1", f"{own}#E0"]), action
        # another job's run, a run id that does not start with its job's name, a batch that mixes them
        assert not template.allows(queue, action, ledger, leading_keys=[other]), action
        assert not template.allows(queue, action, ledger, leading_keys=[f"{other}#S0"]), action
        assert not template.allows(queue, action, ledger, leading_keys=["RUN#r1"]), action
        assert not template.allows(queue, action, ledger, leading_keys=[own, f"{other}#C0"]), action
        # a key that merely starts with the job's name (no dash: another job's name) is not its own
        assert not template.allows(queue, action, ledger, leading_keys=["RUN#credit-scoresX-1"]), action
    # and nothing it may not do at all (no put, no delete, no scan of the ledger)
    for action in ("dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:Scan", "dynamodb:BatchWriteItem"):
        assert not template.allows(queue, action, ledger, leading_keys=[own]), action
    # the pattern is the one the runtime's run ids follow
    assert job_keys_pattern("credit-scores") == "RUN#credit-scores-*"
    assert run_id_refusal("credit-scores", new_run_id("credit-scores")) is None
