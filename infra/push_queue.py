"""The push queue: an SQS standard task queue and its dead-letter queue."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

#: Longest retention SQS allows: a large run may take days to drain after an outage.
RETENTION = Duration.days(14)


class PushQueue(Construct):
    """The task queue and its DLQ.

    Safe defaults (as in aws-solutions-constructs `aws-sqs-lambda`): DLQ on, SQS-managed
    encryption, TLS enforced by a queue policy on both queues, a bounded receive count.

    Args:
        visibility_timeout: the task queue's visibility timeout (>= 6 x the forwarder timeout).
        max_receive_count: receives before a message moves to the DLQ.
        dead_letter_visibility_timeout: the DLQ's visibility timeout (>= 6 x the
            dead-letter function's timeout).

    Attributes:
        queue: the task queue.
        dead_letter_queue: the DLQ.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        visibility_timeout: Duration,
        max_receive_count: int,
        dead_letter_visibility_timeout: Duration,
    ) -> None:
        super().__init__(scope, construct_id)
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=RETENTION,
            visibility_timeout=dead_letter_visibility_timeout,
        )
        self.queue = sqs.Queue(
            self,
            "TaskQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=RETENTION,
            visibility_timeout=visibility_timeout,
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letter_queue, max_receive_count=max_receive_count),
        )
