"""The two-level reduce (ARCHITECTURE §5): one reduce-part task per ledger shard, then
one finalize task. They travel on the reduce queue (`REDUCE_QUEUE_URL`), consumed by a
forwarder of their own with a timeout long enough for a reduce push; the callers pass a
`QueueSender` for that queue (the task queue when no reduce queue is configured).
A job's completion callback, sent once the run has ended, travels on the same queue."""

from __future__ import annotations

from typing import Any

from microprocess.declarations import JobDeclaration
from microprocess.pipeline.envelope import (
    COMPLETION_TASK_ID,
    FINALIZE_TASK_ID,
    TaskEnvelope,
    TaskKind,
    reduce_part_id,
)
from microprocess.pipeline.queue import QueueSender


def reduce_part_envelopes(
    job: JobDeclaration, run_id: str, shard_count: int, only: set[int] | None = None
) -> list[str]:
    shards = sorted(only) if only is not None else range(shard_count)
    return [
        TaskEnvelope(
            kind=TaskKind.REDUCE_PART, job=job.name, run_id=run_id, task_id=reduce_part_id(k), shard=k
        ).to_json()
        for k in shards
    ]


def finalize_envelope(job: JobDeclaration, run_id: str) -> str:
    return TaskEnvelope(
        kind=TaskKind.FINALIZE, job=job.name, run_id=run_id, task_id=FINALIZE_TASK_ID, shard=0
    ).to_json()


def enqueue_reduce_parts(
    sender: QueueSender,
    job: JobDeclaration,
    run_id: str,
    shard_count: int,
    only: set[int] | None = None,
    *,
    delay_s: int = 0,
) -> None:
    """Enqueue the reduce parts of a run whose reduce was just claimed (or, with `only`, the missing
    ones), delivered after `delay_s` (a stopped run's: `control.stop.settle_s`)."""
    sender.send(reduce_part_envelopes(job, run_id, shard_count, only), delay_s=delay_s)


def enqueue_finalize(sender: QueueSender, job: JobDeclaration, run_id: str) -> None:
    sender.send([finalize_envelope(job, run_id)])


def completion_envelope(job: JobDeclaration, run_id: str, body: dict[str, Any]) -> str:
    """The completion callback of an ended run; `body` is what the service receives."""
    return TaskEnvelope(
        kind=TaskKind.COMPLETION, job=job.name, run_id=run_id, task_id=COMPLETION_TASK_ID, shard=0, item=body
    ).to_json()


def enqueue_completion(sender: QueueSender, job: JobDeclaration, run_id: str, body: dict[str, Any]) -> None:
    """Enqueue the completion callback of an ended run (pushed to the job's `completion_path`)."""
    sender.send([completion_envelope(job, run_id, body)])
