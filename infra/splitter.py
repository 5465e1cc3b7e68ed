"""The splitter: one EventBridge schedule per job starts it; it continues itself in steps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aws_cdk import Aws, Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from microprocess.declarations import JobDeclaration, SourceKind, s3_scope
from microprocess.pipeline.splitter import SPLITS_PREFIX
from microprocess.stacks import MANIFESTS_PREFIX

from . import permissions
from .forwarder import CLAIMS_PREFIX
from .lambda_function import FunctionDefaults, MicroprocessFunction
from .nag import acknowledge
from .push_queue import PushQueue

#: Lambda's maximum: the splitter works until its remaining time is short, then continues itself.
TIMEOUT = Duration.minutes(15)
#: EventBridge retries of a failed delivery; a doubled start is harmless (the run id is the event time).
SCHEDULE_RETRY_ATTEMPTS = 4


class Splitter(Construct):
    """The splitter function, its permission to invoke itself, and one schedule rule per job.

    Each rule sends `{"job": <name>, "time": <event time>, "source": "schedule"}`, so a
    doubled delivery of one schedule tick derives the same run id and starts the run once.

    Args:
        defaults: the stage's function defaults.
        jobs: the job declarations (one rule each, on its `schedule`).
        push_queue: where the tasks (each job's task queue) and an empty run's reduce
            (reduce queue) go.
        ledger_table: the run ledger.
        reports_bucket: receives claim-checked items under `claims/`; holds run-time
            manifests under `manifests/`.
        source_tables: the DynamoDB source tables by role (e.g. `{"companies": table}`);
            every dynamodb source a job declares must be here.
        environment: the function's own variables (`SOURCE_TABLES`).

    Attributes:
        function: the `lambda_.Function`.
        rules: the schedule rules by job name.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        defaults: FunctionDefaults,
        jobs: Iterable[JobDeclaration],
        push_queue: PushQueue,
        ledger_table: dynamodb.ITable,
        reports_bucket: s3.IBucket,
        source_tables: Mapping[str, dynamodb.ITable],
        environment: Mapping[str, str],
    ) -> None:
        super().__init__(scope, construct_id)
        declared = list(jobs)
        handler = MicroprocessFunction(
            self,
            "Handler",
            name="splitter",
            defaults=defaults,
            environment=environment,
            timeout=TIMEOUT,
            memory_size=1024,
            description="Reads a job's items in pages and sends one task per item to the job's task queue",
        )
        self.function = handler.function
        self.role = handler.role
        permissions.allow_ledger(self.function, ledger_table)
        if any(job.item_index for job in declared):
            permissions.allow(self.function, permissions.ITEM_INDEX_WRITE, [ledger_table.table_arn])
        # each job's task queue, and the reduce queue: a run with no items reduces at once
        queues = [push_queue.task_queues[job.name] for job in declared] + [push_queue.reduce_queue]
        permissions.allow(self.function, permissions.SEND_MESSAGE, [queue.queue_arn for queue in queues])
        # backpressure: the splitter waits while a job's queue is at its declared depth
        permissions.allow(
            self.function, permissions.QUEUE_DEPTH, [push_queue.task_queues[job.name].queue_arn for job in declared]
        )
        permissions.allow(self.function, permissions.PUT_OBJECT, [reports_bucket.arn_for_objects(f"{CLAIMS_PREFIX}*")])
        # the pages it read, kept (written once) so that a re-sent page sends the same items
        permissions.allow(
            self.function,
            (*permissions.GET_OBJECT, *permissions.PUT_OBJECT),
            [reports_bucket.arn_for_objects(f"{SPLITS_PREFIX}*")],
        )
        # run-time manifests uploaded by the CLI
        permissions.allow(
            self.function, permissions.GET_OBJECT, [reports_bucket.arn_for_objects(f"{MANIFESTS_PREFIX}*")]
        )
        self._grant_sources(declared, source_tables)
        # A separate policy (not the role's default policy, which the function depends on)
        # lets the function name its own ARN without a circular dependency.
        iam.Policy(
            self,
            "ContinueItself",
            roles=[handler.role],
            statements=[iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[self.function.function_arn])],
        )
        self.rules: dict[str, events.Rule] = {}
        for job in declared:
            self.rules[job.name] = events.Rule(
                self,
                f"Schedule-{job.name}",
                description=f"Starts a run of the job '{job.name}'",
                schedule=events.Schedule.expression(job.schedule),
                targets=[
                    targets.LambdaFunction(
                        self.function,
                        event=events.RuleTargetInput.from_object(
                            {"job": job.name, "time": events.EventField.time, "source": "schedule"}
                        ),
                        retry_attempts=SCHEDULE_RETRY_ATTEMPTS,
                    )
                ],
            )

    def _grant_sources(self, jobs: list[JobDeclaration], source_tables: Mapping[str, dynamodb.ITable]) -> None:
        scanned: dict[str, dynamodb.ITable] = {}
        objects: set[str] = set()
        for job in jobs:
            source = job.source
            if source.kind is SourceKind.DYNAMODB:
                table = source_tables.get(source.table or "")
                if table is None:
                    raise ValueError(
                        f"job '{job.name}' reads the table role '{source.table}', but the stack passes only "
                        f"{sorted(source_tables)}: add an ItemSourceTable for it"
                    )
                scanned[source.table or ""] = table
            elif (scope := s3_scope(source)) is not None:
                # One object, or the job's declared prefix (a key template's fixed part): GetObject only.
                objects.add(f"arn:{Aws.PARTITION}:s3:::{scope.bucket}/{scope.key}" + ("*" if scope.is_prefix else ""))
        if scanned:
            permissions.allow(self.function, permissions.SOURCE_TABLE, [t.table_arn for t in scanned.values()])
        if objects:
            permissions.allow(self.function, permissions.GET_OBJECT, sorted(objects))
        prefixes = sorted(o for o in objects if o.endswith("*"))
        if prefixes:
            acknowledge(
                self,
                "A job's S3 source is a key template or a declared prefix (source.uri / source.prefix): each run "
                "reads the manifest it names under that prefix only, GetObject only.",
                *(f"AwsSolutions-IAM5[Resource::{p.replace(Aws.PARTITION, '<AWS::Partition>')}]" for p in prefixes),
            )
