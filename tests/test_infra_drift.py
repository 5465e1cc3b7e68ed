"""One source of truth per fact: the templates against the job declarations, the ledger
schema and the runtime settings; and the pinned logical IDs of the stateful resources."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from infra import contract
from infra.push_settings import FORWARDER_OVERHEAD_S, REDUCE_MAX_CONCURRENCY
from microprocess.declarations.loading import DECLARATIONS_ENV
from microprocess.ledger import LEDGER_SCHEMA
from microprocess.pipeline.forwarder import REDUCE_TIMEOUT_S
from microprocess.pipeline.settings import RuntimeSettings
from microservice.settings import Settings as ServiceSettings
from tests.declared import DECLARATIONS, JOBS
from tests.test_infra_synth import CLOUD, LOCAL, synthesized

pytestmark = [pytest.mark.infra, pytest.mark.xdist_group("infra")]
BOTH = pytest.mark.parametrize("stack", [CLOUD, LOCAL])

#: Changing one of these replaces the resource (and loses its data): the test is the alarm.
#: Written out, not derived, so that a change of the naming rule is caught too.
PINNED = {
    "LedgerTable": "AWS::DynamoDB::Table",
    "CompaniesTable": "AWS::DynamoDB::Table",
    "CreditScoresTaskQueue": "AWS::SQS::Queue",
    "InvoiceRemindersTaskQueue": "AWS::SQS::Queue",
    "ReduceQueue": "AWS::SQS::Queue",
    "DeadLetterQueue": "AWS::SQS::Queue",
    "ReportsBucket": "AWS::S3::Bucket",
    "ScoresSigningSecret": "AWS::SecretsManager::Secret",
    "RemindersSigningSecret": "AWS::SecretsManager::Secret",
    # the live API key of the one bundled service (scores): its clients hold this key
    "ScoresApiKey": "AWS::SecretsManager::Secret",
}
#: The task queue of each job, by job name.
TASK_QUEUES = {"credit-scores": "CreditScoresTaskQueue", "invoice-reminders": "InvoiceRemindersTaskQueue"}
PINNED_CLOUD_ONLY = {"AccessLogsBucket": "AWS::S3::Bucket"}


def resources(stack: str) -> dict[str, dict[str, Any]]:
    return synthesized().templates[stack]["Resources"]


def function(stack: str, name: str) -> dict[str, Any]:
    (fn,) = [
        {"LogicalId": k, **v["Properties"]}
        for k, v in resources(stack).items()
        if v["Type"] == "AWS::Lambda::Function"
        and v["Properties"]["Handler"] == f"functions.{name}.handler.lambda_handler"
    ]
    return fn


# ---------------------------------------------------------------------------- logical IDs


def test_pinned_ids_cover_every_declared_job_table_and_service() -> None:
    assert set(TASK_QUEUES) == set(JOBS.names())
    assert {f"{role.capitalize()}Table" for role in DECLARATIONS.tables} == {"CompaniesTable"}
    assert {k for k, t in PINNED.items() if t == "AWS::SecretsManager::Secret"} == {
        f"{name.capitalize()}SigningSecret" for name in DECLARATIONS.services.names()
    } | {f"{s.name.capitalize()}ApiKey" for s in DECLARATIONS.services if s.bundled}


def test_two_names_that_would_share_a_logical_id_are_refused() -> None:
    from infra import logical_ids

    with pytest.raises(ValueError, match="'job-1' and 'job1' would get the same CloudFormation logical ID"):
        logical_ids.check_unique("job", ["job-1", "job1"])
    assert logical_ids.task_queue("credit-scores") == "CreditScoresTaskQueue"


@BOTH
def test_stateful_logical_ids_are_pinned(stack: str) -> None:
    pinned = PINNED | (PINNED_CLOUD_ONLY if stack == CLOUD else {})
    for logical_id, type_ in pinned.items():
        assert resources(stack)[logical_id]["Type"] == type_, logical_id
    for type_ in set(pinned.values()):
        assert {k for k, v in resources(stack).items() if v["Type"] == type_} == {
            k for k, t in pinned.items() if t == type_
        }, type_


# ---------------------------------------------------------------------------- ledger schema


@BOTH
def test_ledger_keys_and_index_come_from_the_schema(stack: str) -> None:
    table = resources(stack)["LedgerTable"]["Properties"]
    s = LEDGER_SCHEMA
    assert table["KeySchema"] == [
        {"AttributeName": s.partition_key, "KeyType": "HASH"},
        {"AttributeName": s.sort_key, "KeyType": "RANGE"},
    ]
    (index,) = table["GlobalSecondaryIndexes"]
    assert index["IndexName"] == s.runs_index
    assert index["KeySchema"] == [
        {"AttributeName": s.runs_index_partition_key, "KeyType": "HASH"},
        {"AttributeName": s.runs_index_sort_key, "KeyType": "RANGE"},
    ]
    assert index["Projection"] == {"ProjectionType": "ALL"}
    assert {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]} == {
        name: "S" for name in (s.partition_key, s.sort_key, s.runs_index_partition_key, s.runs_index_sort_key)
    }


# ---------------------------------------------------------------------------- job declarations


@BOTH
def test_one_schedule_rule_per_job_naming_the_job(stack: str) -> None:
    splitter = function(stack, "splitter")
    rules = [
        r["Properties"]
        for r in resources(stack).values()
        if r["Type"] == "AWS::Events::Rule"
        and r["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [splitter["LogicalId"], "Arn"]}
    ]
    by_job = {}
    for rule in rules:
        (target,) = rule["Targets"]
        transformer = target["InputTransformer"]
        assert transformer["InputPathsMap"] == {"time": "$.time"}
        document = json.loads(transformer["InputTemplate"].replace("<time>", '"2026-12-01T02:00:00Z"'))
        assert document["source"] == "schedule" and document["time"] == "2026-12-01T02:00:00Z"
        by_job[document["job"]] = rule["ScheduleExpression"]
    assert by_job == {job.name: job.schedule for job in JOBS}


@BOTH
def test_each_jobs_event_source_has_that_jobs_batch_size_and_concurrency(stack: str) -> None:
    forwarder = function(stack, "forwarder")
    mappings = {
        r["Properties"]["EventSourceArn"]["Fn::GetAtt"][0]: r["Properties"]
        for r in resources(stack).values()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
        and r["Properties"]["FunctionName"] == {"Ref": forwarder["LogicalId"]}
    }
    assert set(mappings) == set(TASK_QUEUES.values())
    for job in JOBS:
        mapping = mappings[TASK_QUEUES[job.name]]
        assert mapping["BatchSize"] == job.batch_size, job.name
        assert mapping["ScalingConfig"] == {"MaximumConcurrency": job.max_concurrency}, job.name
    # the repository's two jobs differ, so a shared setting could not satisfy both
    assert len({(j.batch_size, j.max_concurrency) for j in JOBS}) == len(JOBS)


@BOTH
def test_redrive_and_visibility_derive_from_the_declarations(stack: str) -> None:
    forwarder_timeout = function(stack, "forwarder")["Timeout"]
    for job in JOBS:
        queue = resources(stack)[TASK_QUEUES[job.name]]["Properties"]
        # the forwarder records FAILED at the job's max_attempts; the DLQ catches only crashes
        assert queue["RedrivePolicy"]["maxReceiveCount"] == job.max_attempts + 2, job.name
        assert queue["VisibilityTimeout"] >= 6 * forwarder_timeout
    # the task forwarder outlasts its slowest push: a task's timeout (reduce calls have their own queue)
    assert forwarder_timeout > max(job.task_timeout_s for job in JOBS)
    assert forwarder_timeout <= 900
    # ... and no more than that plus its overhead: a crashed batch comes back in minutes
    assert forwarder_timeout == math.ceil(max(job.task_timeout_s for job in JOBS)) + FORWARDER_OVERHEAD_S


@BOTH
def test_reduce_queue_redrive_and_visibility_derive_from_the_reduce_timeout(stack: str) -> None:
    queue = resources(stack)["ReduceQueue"]["Properties"]
    reducer = function(stack, "reducer")
    # a reduce task of any job: the most attempts any job declares
    assert queue["RedrivePolicy"]["maxReceiveCount"] == max(job.max_attempts for job in JOBS) + 2
    assert queue["VisibilityTimeout"] == 6 * reducer["Timeout"]
    # a task queue's visibility is 6 x its own (short) forwarder's timeout, not the reducer's
    for logical_id in TASK_QUEUES.values():
        task_queue = resources(stack)[logical_id]["Properties"]
        forwarder_timeout = function(stack, "forwarder")["Timeout"]
        assert task_queue["VisibilityTimeout"] == 6 * forwarder_timeout < queue["VisibilityTimeout"]
    # the reducer outlasts a reduce call
    assert reducer["Timeout"] == math.ceil(REDUCE_TIMEOUT_S) + FORWARDER_OVERHEAD_S
    assert REDUCE_TIMEOUT_S < reducer["Timeout"] <= 900


@BOTH
def test_reduce_event_source_takes_one_record_at_a_time_with_a_small_cap(stack: str) -> None:
    reducer = function(stack, "reducer")
    (mapping,) = [
        r["Properties"]
        for r in resources(stack).values()
        if r["Type"] == "AWS::Lambda::EventSourceMapping"
        and r["Properties"]["FunctionName"] == {"Ref": reducer["LogicalId"]}
    ]
    assert mapping["EventSourceArn"] == {"Fn::GetAtt": ["ReduceQueue", "Arn"]}
    assert mapping["BatchSize"] == 1
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"] == {
        "MaximumConcurrency": min(REDUCE_MAX_CONCURRENCY, *(job.max_concurrency for job in JOBS))
    }


@BOTH
def test_each_source_table_is_keyed_as_declared(stack: str) -> None:
    for role, declared in DECLARATIONS.tables.items():
        table = resources(stack)[f"{role.capitalize()}Table"]["Properties"]
        assert table["KeySchema"] == [{"AttributeName": declared.partition_key, "KeyType": "HASH"}]
        # and the jobs reading it address items by that key
        readers = [job for job in JOBS if job.source.table == role]
        assert readers and all(job.item_id_field == declared.partition_key for job in readers)


# ---------------------------------------------------------------------------- runtime settings


@BOTH
def test_function_variables_are_settings_the_runtime_reads(stack: str) -> None:
    known = (
        {name.upper() for name in RuntimeSettings.model_fields}
        | contract.POWERTOOLS_VARIABLES
        | contract.DECLARATIONS_VARIABLES
    )
    for name in ("splitter", "forwarder", "reducer", "dead_letter", "sweeper"):
        variables = set(function(stack, name)["Environment"]["Variables"])
        assert variables <= known, (name, variables - known)


def test_service_variables_are_settings_the_service_reads() -> None:
    known = {name.upper() for name in ServiceSettings.model_fields}
    for task in (r for r in resources(CLOUD).values() if r["Type"] == "AWS::ECS::TaskDefinition"):
        (container,) = task["Properties"]["ContainerDefinitions"]
        names = {e["Name"] for e in container["Environment"]}
        assert names <= known, names - known


def test_the_declarations_variable_is_the_one_the_loader_reads() -> None:
    assert contract.MICROPROCESS_DECLARATIONS == DECLARATIONS_ENV


@BOTH
def test_the_task_forwarder_reads_the_sweepers_timing_so_its_deferral_grace_outlasts_a_split_restart(
    stack: str,
) -> None:
    from microprocess.pipeline.settings import split_restart_bound_s

    # GIVEN the sweeper's timing as deployed: its variables and its schedule
    sweeper = function(stack, "sweeper")
    timing = {
        name: sweeper["Environment"]["Variables"][name] for name in (contract.STUCK_AFTER_S, contract.SWEEP_PERIOD_S)
    }
    (rule,) = [
        r["Properties"]
        for r in resources(stack).values()
        if r["Type"] == "AWS::Events::Rule"
        and r["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [sweeper["LogicalId"], "Arn"]}
    ]
    minutes = int(rule["ScheduleExpression"].removeprefix("rate(").split()[0])
    assert int(timing[contract.SWEEP_PERIOD_S]) == minutes * 60
    # THEN the task forwarder has the same variables, so its deferral grace is derived from them
    forwarder = function(stack, "forwarder")["Environment"]["Variables"]
    assert {name: forwarder.get(name) for name in timing} == timing
    settings = RuntimeSettings.from_env({"LEDGER_TABLE": "ledger", **timing})
    stuck, period = int(timing[contract.STUCK_AFTER_S]), int(timing[contract.SWEEP_PERIOD_S])
    assert settings.defer_grace_s > split_restart_bound_s(stuck, period)
