"""The dead-letter handler: tasks whose messages reached the DLQ still finish their runs."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from constructs import Construct

from . import permissions
from .lambda_function import FunctionDefaults, MicroprocessFunction
from .push_queue import PushQueue

#: The dead-letter function's timeout; the DLQ's visibility timeout is 6 x this.
TIMEOUT = Duration.seconds(60)
BATCH_SIZE = 10
#: Key prefix where unreadable messages are kept (nothing is lost).
QUARANTINE_PREFIX = "quarantine/"


class DeadLetterHandler(Construct):
    """The dead-letter function and its own SQS event source on the DLQ.

    It marks each dead-lettered task FAILED in the ledger (counted once), may claim and
    enqueue the run's reduce, and quarantines unreadable messages in the reports bucket.

    Args:
        defaults: the stage's function defaults.
        push_queue: the reduce queue (for reduce tasks) and the DLQ it consumes.
        ledger_table: the run ledger.
        reports_bucket: receives quarantined messages under `quarantine/`.

    Attributes:
        function: the `lambda_.Function`.
        event_source: the `SqsEventSource` on the DLQ.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        defaults: FunctionDefaults,
        push_queue: PushQueue,
        ledger_table: dynamodb.ITable,
        reports_bucket: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        handler = MicroprocessFunction(
            self,
            "Handler",
            name="dead_letter",
            defaults=defaults,
            environment={},
            timeout=TIMEOUT,
            description="Records dead-lettered tasks as FAILED so that their runs still finish",
        )
        self.function = handler.function
        self.role = handler.role
        self.event_source = event_sources.SqsEventSource(
            push_queue.dead_letter_queue, batch_size=BATCH_SIZE, report_batch_item_failures=True
        )
        self.function.add_event_source(self.event_source)
        permissions.allow_ledger(self.function, ledger_table)
        permissions.allow(self.function, permissions.SEND_MESSAGE, [push_queue.reduce_queue.queue_arn])
        permissions.allow(
            self.function, permissions.PUT_OBJECT, [reports_bucket.arn_for_objects(f"{QUARANTINE_PREFIX}*")]
        )
