"""The push queues' numbers, derived from the job declarations (never typed twice).

Two queues, each with its own forwarder function (the same code): the task queue, whose
forwarder only needs to outlast a task push, and the reduce queue (reduce parts and
finalizes), whose forwarder outlasts a reduce push. So a crashed task batch comes back
after 6 x (task timeout + overhead), not 6 x (reduce timeout + overhead).

One task queue and one forwarder serve every job, so where jobs differ the strictest
declaration wins: the smallest batch, the lowest concurrency cap, the most attempts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from microprocess.declarations import JobDeclaration
from microprocess.pipeline.forwarder import REDUCE_TIMEOUT_S

#: SQS redrives a message this many receives after the job's last attempt, so that the
#: forwarder itself records FAILED at `max_attempts` and the DLQ only catches crashes.
REDRIVE_MARGIN = 2
#: AWS guidance for SQS event sources: visibility timeout at least 6 x the function timeout.
VISIBILITY_FACTOR = 6
#: Time a forwarder needs beyond its slowest push (read the batch, record outcomes), s.
FORWARDER_OVERHEAD_S = 60
#: Lambda's hard limit, s.
LAMBDA_MAX_TIMEOUT_S = 900
#: Reduce tasks are few (one per ledger shard, then one finalize) and long: one per invocation.
REDUCE_BATCH_SIZE = 1
#: The reduce forwarder's cap on concurrent invocations (never above the jobs' own cap).
REDUCE_MAX_CONCURRENCY = 10


def _forwarder_timeout_s(slowest_push_s: float, what: str) -> int:
    timeout_s = math.ceil(slowest_push_s) + FORWARDER_OVERHEAD_S
    if timeout_s > LAMBDA_MAX_TIMEOUT_S:
        raise ValueError(
            f"the {what} forwarder would need {timeout_s} s (slowest push {slowest_push_s:g} s + "
            f"{FORWARDER_OVERHEAD_S} s), above Lambda's {LAMBDA_MAX_TIMEOUT_S} s: lower task_timeout_s "
            "or REDUCE_TIMEOUT_S"
        )
    return timeout_s


@dataclass(frozen=True)
class QueueConsumer:
    """One push queue and its forwarder function, as the constructs need them.

    Attributes:
        timeout_s: the forwarder function's timeout, seconds.
        visibility_timeout_s: the queue's visibility timeout, seconds.
        batch_size: records per invocation.
        max_concurrency: the event source's cap on concurrent batches.
    """

    timeout_s: int
    visibility_timeout_s: int
    batch_size: int
    max_concurrency: int


@dataclass(frozen=True)
class PushSettings:
    """Queue and event source settings for the push path.

    Attributes:
        forwarder_timeout_s: the task forwarder's timeout (slowest task push + overhead), s.
        visibility_timeout_s: the task queue's visibility timeout, seconds.
        max_receive_count: receives before SQS moves a message to the DLQ (both queues).
        batch_size: records per task forwarder invocation.
        max_concurrency: the task event source's cap on concurrent forwarder batches.
        reduce_forwarder_timeout_s: the reduce forwarder's timeout (REDUCE_TIMEOUT_S + overhead), s.
        reduce_visibility_timeout_s: the reduce queue's visibility timeout, seconds.
        reduce_batch_size: records per reduce forwarder invocation.
        reduce_max_concurrency: the reduce event source's cap on concurrent batches.
    """

    forwarder_timeout_s: int
    visibility_timeout_s: int
    max_receive_count: int
    batch_size: int
    max_concurrency: int
    reduce_forwarder_timeout_s: int
    reduce_visibility_timeout_s: int
    reduce_batch_size: int
    reduce_max_concurrency: int

    @property
    def tasks(self) -> QueueConsumer:
        """The task queue and its forwarder."""
        return QueueConsumer(self.forwarder_timeout_s, self.visibility_timeout_s, self.batch_size, self.max_concurrency)

    @property
    def reduces(self) -> QueueConsumer:
        """The reduce queue and its forwarder."""
        return QueueConsumer(
            self.reduce_forwarder_timeout_s,
            self.reduce_visibility_timeout_s,
            self.reduce_batch_size,
            self.reduce_max_concurrency,
        )

    @classmethod
    def from_jobs(cls, jobs: Iterable[JobDeclaration]) -> PushSettings:
        declared = list(jobs)
        if not declared:
            raise ValueError("no jobs declared: the push queue's settings derive from at least one JobDeclaration")
        forwarder_timeout_s = _forwarder_timeout_s(max(job.task_timeout_s for job in declared), "task")
        reduce_timeout_s = _forwarder_timeout_s(REDUCE_TIMEOUT_S, "reduce")
        max_concurrency = min(job.max_concurrency for job in declared)
        return cls(
            forwarder_timeout_s=forwarder_timeout_s,
            visibility_timeout_s=VISIBILITY_FACTOR * forwarder_timeout_s,
            max_receive_count=max(job.max_attempts for job in declared) + REDRIVE_MARGIN,
            batch_size=min(job.batch_size for job in declared),
            max_concurrency=max_concurrency,
            reduce_forwarder_timeout_s=reduce_timeout_s,
            reduce_visibility_timeout_s=VISIBILITY_FACTOR * reduce_timeout_s,
            reduce_batch_size=REDUCE_BATCH_SIZE,
            reduce_max_concurrency=min(REDUCE_MAX_CONCURRENCY, max_concurrency),
        )
