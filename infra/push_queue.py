"""The push queues: an SQS standard task queue, a reduce queue and their dead-letter queue."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

#: Longest retention SQS allows: a large run may take days to drain after an outage.
RETENTION = Duration.days(14)


class PushQueue(Construct):
    """The task queue, the reduce queue and their (shared) DLQ.

    Safe defaults (as in aws-solutions-constructs `aws-sqs-lambda`): DLQ on, SQS-managed
    encryption, TLS enforced by a queue policy on every queue, a bounded receive count.

    Args:
        visibility_timeout: the task queue's visibility timeout (>= 6 x the task forwarder timeout).
        reduce_visibility_timeout: the reduce queue's visibility timeout (>= 6 x the reduce
            forwarder timeout).
        max_receive_count: receives before a message moves to the DLQ (both queues).
        dead_letter_visibility_timeout: the DLQ's visibility timeout (>= 6 x the
            dead-letter function's timeout).

    Attributes:
        queue: the task queue.
        reduce_queue: the reduce queue (reduce parts and finalizes).
        dead_letter_queue: the DLQ.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        visibility_timeout: Duration,
        reduce_visibility_timeout: Duration,
        max_receive_count: int,
        dead_letter_visibility_timeout: Duration,
    ) -> None:
        super().__init__(scope, construct_id)
        self.dead_letter_queue = self._queue("DeadLetterQueue", dead_letter_visibility_timeout)
        redrive = sqs.DeadLetterQueue(queue=self.dead_letter_queue, max_receive_count=max_receive_count)
        self.queue = self._queue("TaskQueue", visibility_timeout, redrive)
        self.reduce_queue = self._queue("ReduceQueue", reduce_visibility_timeout, redrive)

    def _queue(self, construct_id: str, visibility: Duration, redrive: sqs.DeadLetterQueue | None = None) -> sqs.Queue:
        """A queue with the settings all three share: SQS-managed encryption, TLS only, retention."""
        return sqs.Queue(
            self,
            construct_id,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=RETENTION,
            visibility_timeout=visibility,
            dead_letter_queue=redrive,
        )
