"""The push queue's numbers, derived from the job declarations (never typed twice).

One queue and one forwarder serve every job, so where jobs differ the strictest
declaration wins: the smallest batch, the lowest concurrency cap, the most attempts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from microprocess.forwarder import REDUCE_TIMEOUT_S
from microprocess.jobs import JobDeclaration

#: SQS redrives a message this many receives after the job's last attempt, so that the
#: forwarder itself records FAILED at `max_attempts` and the DLQ only catches crashes.
REDRIVE_MARGIN = 2
#: AWS guidance for SQS event sources: visibility timeout at least 6 x the function timeout.
VISIBILITY_FACTOR = 6
#: Time the forwarder needs beyond its slowest push (read the batch, record outcomes), s.
FORWARDER_OVERHEAD_S = 60
#: Lambda's hard limit, s.
LAMBDA_MAX_TIMEOUT_S = 900


@dataclass(frozen=True)
class PushSettings:
    """Queue and event source settings for the push path.

    Attributes:
        forwarder_timeout_s: the forwarder function's timeout, seconds.
        visibility_timeout_s: the task queue's visibility timeout, seconds.
        max_receive_count: receives before SQS moves a message to the DLQ.
        batch_size: records per forwarder invocation.
        max_concurrency: the event source's cap on concurrent forwarder batches.
    """

    forwarder_timeout_s: int
    visibility_timeout_s: int
    max_receive_count: int
    batch_size: int
    max_concurrency: int

    @classmethod
    def from_jobs(cls, jobs: Iterable[JobDeclaration]) -> PushSettings:
        declared = list(jobs)
        if not declared:
            raise ValueError("no jobs declared: the push queue's settings derive from at least one JobDeclaration")
        slowest_push_s = max(REDUCE_TIMEOUT_S, *(job.task_timeout_s for job in declared))
        forwarder_timeout_s = math.ceil(slowest_push_s) + FORWARDER_OVERHEAD_S
        if forwarder_timeout_s > LAMBDA_MAX_TIMEOUT_S:
            raise ValueError(
                f"the forwarder would need {forwarder_timeout_s} s (slowest push {slowest_push_s:g} s + "
                f"{FORWARDER_OVERHEAD_S} s), above Lambda's {LAMBDA_MAX_TIMEOUT_S} s: lower task_timeout_s "
                "or REDUCE_TIMEOUT_S"
            )
        return cls(
            forwarder_timeout_s=forwarder_timeout_s,
            visibility_timeout_s=VISIBILITY_FACTOR * forwarder_timeout_s,
            max_receive_count=max(job.max_attempts for job in declared) + REDRIVE_MARGIN,
            batch_size=min(job.batch_size for job in declared),
            max_concurrency=min(job.max_concurrency for job in declared),
        )
