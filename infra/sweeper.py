"""The sweeper: on a rate schedule, repairs counters, re-enqueues lost reduces, flags stuck runs."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from microprocess.pipeline.settings import DEFAULT_STUCK_AFTER_S, DEFAULT_SWEEP_PERIOD_S

from . import contract, permissions
from .lambda_function import FunctionDefaults, MicroprocessFunction
from .push_queue import PushQueue


def timing_environment(rate: Duration, stuck_after_s: int) -> dict[str, str]:
    """The sweeper's timing as function variables: set on the sweeper, which acts on it, and on
    the task forwarder, whose deferral grace derives from it (`RuntimeSettings.defer_grace_s`)."""
    return {contract.STUCK_AFTER_S: str(stuck_after_s), contract.SWEEP_PERIOD_S: str(int(rate.to_seconds()))}


RATE = Duration.seconds(DEFAULT_SWEEP_PERIOD_S)
#: A run with no progress for this long is repaired and reported stuck (cloud default), s.
STUCK_AFTER_S = DEFAULT_STUCK_AFTER_S
#: Shorter than the rate, so that sweeps do not overlap in the common case (repairs are fenced anyway).
TIMEOUT = Duration.minutes(4)


class Sweeper(Construct):
    """The sweeper function and its rate schedule.

    Args:
        defaults: the stage's function defaults.
        push_queue: its reduce queue is where re-enqueued reduce tasks go.
        ledger_table: the run ledger.
        splitter_function: restarted for a run whose split stalled.
        rate: how often it runs.
        stuck_after_s: a run with no progress for this long is repaired, restarted or reported stuck.

    Attributes:
        function: the `lambda_.Function`.
        rule: the schedule rule.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        defaults: FunctionDefaults,
        push_queue: PushQueue,
        ledger_table: dynamodb.ITable,
        splitter_function: lambda_.IFunction,
        rate: Duration = RATE,
        stuck_after_s: int = STUCK_AFTER_S,
    ) -> None:
        super().__init__(scope, construct_id)
        handler = MicroprocessFunction(
            self,
            "Handler",
            name="sweeper",
            defaults=defaults,
            environment={
                contract.SPLITTER_FUNCTION_NAME: splitter_function.function_name,
                **timing_environment(rate, stuck_after_s),
            },
            timeout=TIMEOUT,
            description="Repairs counters, re-enqueues lost reduces and reports stuck runs",
        )
        self.function = handler.function
        self.role = handler.role
        permissions.allow_ledger(self.function, ledger_table)
        permissions.allow(self.function, permissions.REPAIR_DELETE, [ledger_table.table_arn])
        permissions.allow(self.function, permissions.SEND_MESSAGE, [push_queue.reduce_queue.queue_arn])
        # Only the unqualified function (what the sweeper invokes by name), not every version.
        splitter_function.grant_invoke_latest_version(self.function)
        self.rule = events.Rule(
            self,
            "Schedule",
            description="Runs the microprocess sweeper",
            schedule=events.Schedule.rate(rate),
            targets=[targets.LambdaFunction(self.function, retry_attempts=0)],
        )
