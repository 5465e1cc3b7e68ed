"""The push queues: one SQS standard task queue per job, a reduce queue and their shared DLQ."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from . import logical_ids
from .nag import skip_checkov
from .push_settings import QueueConsumer

#: Longest retention SQS allows: a large run may take days to drain after an outage.
RETENTION = Duration.days(14)


class PushQueue(Construct):
    """The jobs' task queues, the reduce queue and their (shared) DLQ.

    Safe defaults (as in aws-solutions-constructs `aws-sqs-lambda`): DLQ on, SQS-managed
    encryption, TLS enforced by a queue policy on every queue, a bounded receive count.

    Args:
        jobs: each job's task queue settings, by job name (visibility >= 6 x the task
            forwarder timeout, redrive after the job's max attempts + a margin).
        reduces: the reduce queue's settings (visibility >= 6 x the reducer timeout).
        dead_letter_visibility_timeout: the DLQ's visibility timeout (>= 6 x the
            dead-letter function's timeout).

    Attributes:
        task_queues: the task queue of each job, by job name.
        reduce_queue: the reduce queue (reduce parts and finalizes of every job).
        dead_letter_queue: the DLQ.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        jobs: Mapping[str, QueueConsumer],
        reduces: QueueConsumer,
        dead_letter_visibility_timeout: Duration,
    ) -> None:
        super().__init__(scope, construct_id)
        if not jobs:
            raise ValueError("PushQueue needs at least one job's task queue")
        logical_ids.check_unique("job", jobs)
        self.dead_letter_queue = self._queue("DeadLetterQueue", dead_letter_visibility_timeout.to_seconds())
        self.task_queues: dict[str, sqs.Queue] = {
            job: self._queue(f"TaskQueue-{job}", consumer.visibility_timeout_s, consumer.max_receive_count)
            for job, consumer in jobs.items()
        }
        self.reduce_queue = self._queue("ReduceQueue", reduces.visibility_timeout_s, reduces.max_receive_count)

    def _queue(self, construct_id: str, visibility_s: float, max_receive_count: int | None = None) -> sqs.Queue:
        """A queue with the settings all share: SQS-managed encryption, TLS only, retention."""
        redrive = (
            sqs.DeadLetterQueue(queue=self.dead_letter_queue, max_receive_count=max_receive_count)
            if max_receive_count is not None
            else None
        )
        queue = sqs.Queue(
            self,
            construct_id,
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=RETENTION,
            visibility_timeout=Duration.seconds(visibility_s),
            dead_letter_queue=redrive,
        )
        skip_checkov(
            queue,
            "Encrypted at rest with SQS-managed SSE (SqsManagedSseEnabled: true); CKV_AWS_27 only recognizes a "
            "KMS key (KmsMasterKeyId), which would add a KMS call per message batch and a key policy for every "
            "sender and consumer, without narrowing who may read (the queue policy and IAM grants do that).",
            "CKV_AWS_27",
        )
        return queue

    @property
    def all_queues(self) -> list[sqs.Queue]:
        """Every queue: the task queues, the reduce queue and the DLQ."""
        return [*self.task_queues.values(), self.reduce_queue, self.dead_letter_queue]
