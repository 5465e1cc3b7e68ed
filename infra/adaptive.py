"""Adaptive concurrency: a function that moves the caps of the jobs declared `adaptive = true`, every minute."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from microprocess.control.scheduled import FORWARDER_FUNCTION_NAME, INTERVAL_S, STATE_PK_PREFIX
from microprocess.control.share import SERVICE_PK_PREFIX

from . import permissions
from .lambda_function import FunctionDefaults, MicroprocessFunction
from .nag import acknowledge

#: One tick is a few API calls per job.
TIMEOUT = Duration.seconds(50)
#: How often it decides: the controller's interval (the metrics window it reads).
RATE = Duration.seconds(INTERVAL_S)


class AdaptiveConcurrencyControl(Construct):
    """The scheduled AIMD controller (`microprocess.control.scheduled`) of the adaptive jobs.

    Least privilege: it reads the forwarder's metrics (GetMetricData, which has no resource-level
    permissions), lists event source mappings (none either), updates only the adaptive jobs'
    own mappings on the task forwarder, reads those jobs' queue ARNs, and keeps its state in
    the ledger table's `JOB#` and `SVC#` items only (no run, counter or task record): a job's
    controller state, a shared service's state and its high-priority marks (`service_controller`).

    Args:
        defaults: the stage's function defaults (the ledger table and the queues in its environment).
        forwarder: the task forwarder function (whose mappings carry the caps).
        sources: the event source of each adaptive job, by job name (at least one).
        queues: the task queue of each adaptive job, by job name.
        ledger_table: the run ledger (the controller's state lives there).
        rate: how often it decides (the metrics window it reads is the same minute).

    Attributes:
        function: the `lambda_.Function`.
        role: its execution role.
        rule: the schedule rule.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        defaults: FunctionDefaults,
        forwarder: lambda_.IFunction,
        sources: Mapping[str, event_sources.SqsEventSource],
        queues: Mapping[str, sqs.IQueue],
        ledger_table: dynamodb.ITable,
        rate: Duration = RATE,
    ) -> None:
        super().__init__(scope, construct_id)
        if not sources:
            raise ValueError("AdaptiveConcurrencyControl needs at least one job declared `adaptive = true`")
        if set(sources) != set(queues):
            raise ValueError(f"sources {sorted(sources)} and queues {sorted(queues)} must name the same jobs")
        handler = MicroprocessFunction(
            self,
            "Handler",
            name="adaptive",
            defaults=defaults,
            environment={FORWARDER_FUNCTION_NAME: forwarder.function_name},
            timeout=TIMEOUT,
            memory_size=128,
            description="Moves the caps of adaptive jobs and splits shared services' capacity (AIMD, weights)",
        )
        self.function = handler.function
        self.role = handler.role
        permissions.allow(self.function, permissions.READ_METRICS, ["*"])
        permissions.allow(self.function, permissions.LIST_EVENT_SOURCE_MAPPINGS, ["*"])
        acknowledge(
            self.role,
            "cloudwatch:GetMetricData and lambda:ListEventSourceMappings support no resource-level "
            "permissions; the updates are limited to the adaptive jobs' own mappings.",
            "AwsSolutions-IAM5[Resource::*]",
        )
        permissions.allow(
            self.function,
            permissions.UPDATE_EVENT_SOURCE_MAPPING,
            [source.event_source_mapping_arn for source in sources.values()],
        )
        # The scaler finds a job's mapping by its queue's ARN (GetQueueAttributes QueueArn).
        permissions.allow(self.function, permissions.QUEUE_DEPTH, [queue.queue_arn for queue in queues.values()])
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=list(permissions.CONTROLLER_STATE),
                resources=[ledger_table.table_arn],
                conditions={
                    "ForAllValues:StringLike": {
                        "dynamodb:LeadingKeys": [f"{STATE_PK_PREFIX}*", f"{SERVICE_PK_PREFIX}*"]
                    }
                },
            )
        )
        self.rule = events.Rule(
            self,
            "Schedule",
            description=f"Runs the adaptive concurrency of {', '.join(sorted(sources))}",
            schedule=events.Schedule.rate(rate),
            targets=[targets.LambdaFunction(self.function, retry_attempts=0)],
        )
