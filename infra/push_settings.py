"""The push queues' numbers, derived from the job declarations (never typed twice).

Every job has its own task queue and its own event source on the one task forwarder
function, so one job's batch size, concurrency cap and attempts never change another's.
Reduce parts and finalizes share one reduce queue, consumed by the `reducer` function (the
same code), whose timeout outlasts a reduce push. So a crashed task batch comes back after
6 x (slowest task timeout + overhead), not 6 x (reduce timeout + overhead).

What the jobs share is the forwarder function itself, so its timeout outlasts the slowest
job's task push; each task queue's visibility timeout is derived from that one timeout.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

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
#: The reduce forwarder's cap on concurrent invocations (never above the jobs' own caps).
REDUCE_MAX_CONCURRENCY = 10
#: The lowest cap an SQS event source accepts.
MIN_EVENT_SOURCE_CONCURRENCY = 2


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
    """One queue and the event source that feeds it to a forwarder function.

    Attributes:
        visibility_timeout_s: the queue's visibility timeout, seconds.
        max_receive_count: receives before SQS moves a message to the DLQ.
        batch_size: records per invocation.
        max_concurrency: the event source's cap on concurrent batches.
    """

    visibility_timeout_s: int
    max_receive_count: int
    batch_size: int
    max_concurrency: int


@dataclass(frozen=True)
class PushSettings:
    """Queue and event source settings of the push path.

    Attributes:
        forwarder_timeout_s: the task forwarder's timeout (slowest task push + overhead), s.
        jobs: each job's task queue and event source, by job name (declaration order).
        reducer_timeout_s: the reducer's timeout (REDUCE_TIMEOUT_S + overhead), s.
        reduces: the reduce queue and its event source.
    """

    forwarder_timeout_s: int
    jobs: Mapping[str, QueueConsumer]
    reducer_timeout_s: int
    reduces: QueueConsumer

    @classmethod
    def from_jobs(cls, jobs: Iterable[JobDeclaration]) -> PushSettings:
        declared = list(jobs)
        if not declared:
            raise ValueError("no jobs declared: the push queues' settings derive from at least one JobDeclaration")
        forwarder_timeout_s = _forwarder_timeout_s(max(job.task_timeout_s for job in declared), "task")
        reducer_timeout_s = _forwarder_timeout_s(REDUCE_TIMEOUT_S, "reduce")
        return cls(
            forwarder_timeout_s=forwarder_timeout_s,
            jobs={
                job.name: QueueConsumer(
                    visibility_timeout_s=VISIBILITY_FACTOR * forwarder_timeout_s,
                    max_receive_count=job.max_attempts + REDRIVE_MARGIN,
                    batch_size=job.batch_size,
                    max_concurrency=job.max_concurrency,
                )
                for job in declared
            },
            reducer_timeout_s=reducer_timeout_s,
            reduces=QueueConsumer(
                visibility_timeout_s=VISIBILITY_FACTOR * reducer_timeout_s,
                # a reduce task of any job: the most attempts any job declares
                max_receive_count=max(job.max_attempts for job in declared) + REDRIVE_MARGIN,
                batch_size=REDUCE_BATCH_SIZE,
                max_concurrency=min(REDUCE_MAX_CONCURRENCY, *(job.max_concurrency for job in declared)),
            ),
        )

    def capped(self, max_concurrency: int) -> PushSettings:
        """Every event source capped at `max_concurrency` (one laptop runs every batch)."""
        if max_concurrency < MIN_EVENT_SOURCE_CONCURRENCY:
            raise ValueError(
                f"forwarder_max_concurrency must be at least {MIN_EVENT_SOURCE_CONCURRENCY} (the lowest cap an "
                f"SQS event source accepts), got {max_concurrency}"
            )

        def cap(consumer: QueueConsumer) -> QueueConsumer:
            return replace(consumer, max_concurrency=min(consumer.max_concurrency, max_concurrency))

        return replace(self, jobs={name: cap(c) for name, c in self.jobs.items()}, reduces=cap(self.reduces))

    def with_visibility(self, *, tasks_s: int | None = None, reduces_s: int | None = None) -> PushSettings:
        """Shorter visibility timeouts (local stage: a crashed batch comes back in seconds)."""
        jobs = self.jobs
        if tasks_s is not None:
            jobs = {name: replace(c, visibility_timeout_s=tasks_s) for name, c in jobs.items()}
        reduces = self.reduces if reduces_s is None else replace(self.reduces, visibility_timeout_s=reduces_s)
        return replace(self, jobs=jobs, reduces=reduces)
