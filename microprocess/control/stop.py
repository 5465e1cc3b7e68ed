"""Stop early: a run that can no longer succeed stops at once and ends FAILED (per-job `stop_early`).

Checked where failures are recorded (the forwarder's batch with new failures, the dead-letter
handler) and where the split finishes (the expected total becomes final). The check reads the
run and its counters (one GetItem + one BatchGetItem of the counters) only then, never per
success. The decision is `tolerance.cannot_succeed`; the counters never over-count, so a
"cannot succeed" read from them is certain.

A stopped run moves straight to REDUCING (its reduce claimed, `stopped_early_at` set): the
forwarder acknowledges its remaining messages without a push (late for a reducing run), the
splitter's next page is refused (`RunNotActive`), and the reduce builds the report of what was
done (the tasks batches in flight at the stop recorded included), with the run's other tasks
listed as not attempted from the same reading of the ledger, mails it, and ends the run FAILED
(`ledger.ended_status`: some of its tasks never ran).

The reduce of a stopped run starts after `settle_s`: a forwarder that read the run as running
just before the stop may still admit a batch for `RUN_CACHE_TTL_S`, push it (each push bounded by
the job's `task_timeout_s`, to connect and to read) and record it. Built sooner, the report would
list as not attempted a task such a batch records afterwards (a task done, reported as never run).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from microprocess.control.tolerance import cannot_succeed
from microprocess.declarations import JobDeclaration
from microprocess.ledger import Ledger, RunStatus, utc_now_iso
from microprocess.ledger.records import _is_conditional_failure, _run_pk, _to_ddb
from microprocess.pipeline.admission import RUN_CACHE_TTL_S
from microprocess.pipeline.fanin import enqueue_reduce_parts
from microprocess.pipeline.queue import QueueSender

log = logging.getLogger(__name__)

#: Statuses a run can be stopped early from.
STOPPABLE = (RunStatus.SPLITTING, RunStatus.RUNNING, RunStatus.PAUSED)

#: What a batch needs after its pushes are answered: recording its outcomes (retries included).
RECORD_MARGIN_S = 10.0
#: SQS's longest message delay.
MAX_DELAY_S = 900


def settle_s(job: JobDeclaration) -> int:
    """Seconds after a stop until no batch admitted before it can still record a task: the run
    cache's TTL, a push's connect and read timeouts, and the record's margin."""
    return min(MAX_DELAY_S, math.ceil(RUN_CACHE_TTL_S + 2 * job.task_timeout_s + RECORD_MARGIN_S))


def enqueue_stopped_reduce(sender: QueueSender, ledger: Ledger, job: JobDeclaration, run_id: str) -> None:
    """Enqueue the reduce parts of a run just stopped, delivered once it has settled (`settle_s`)."""
    enqueue_reduce_parts(sender, job, run_id, ledger.require_run(run_id).shard_count, delay_s=settle_s(job))


def stop_run(ledger: Ledger, run_id: str, error: str, *, source_failed: bool = False) -> bool:
    """Stop a splitting, running or paused run: claim its reduce now (REDUCING), marked
    `stopped_early_at` with `error` (and `source_failed_at` with `source_failed`: the run then
    ends FAILED whatever its counts). True for the one caller whose write stopped it."""
    values: dict[str, Any] = {":f": str(RunStatus.REDUCING), ":now": utc_now_iso(), ":e": error}
    values |= {f":s{i}": str(s) for i, s in enumerate(STOPPABLE)}
    marks = "stopped_early_at = :now, source_failed_at = :now" if source_failed else "stopped_early_at = :now"
    try:
        ledger.client.update_item(
            TableName=ledger.table_name,
            Key=_to_ddb({"pk": _run_pk(run_id), "sk": "RUN"}),
            UpdateExpression=f"SET #st = :f, reduce_claimed_at = :now, {marks}, #err = :e",
            ConditionExpression=f"#st IN ({', '.join(f':s{i}' for i in range(len(STOPPABLE)))})",
            ExpressionAttributeNames={"#st": "status", "#err": "error"},
            ExpressionAttributeValues=_to_ddb(values),
        )
        return True
    except ClientError as exc:
        if _is_conditional_failure(exc):
            return False
        raise


def stop_if_hopeless(
    ledger: Ledger,
    run_id: str,
    job: JobDeclaration,
    *,
    emit: Callable[..., None] | None = None,
    reduce_sender: QueueSender | None = None,
) -> bool:
    """Stop the run if its failures already exceed the job's tolerance for good, and enqueue its
    reduce (on `reduce_sender`; without one, the sweeper re-enqueues the claimed reduce later).

    Returns True if this call stopped it. Never raises: the outcomes that led here are already
    recorded, and a check that failed is made again with the next failure (or the run ends
    FAILED through its reduce, as without `stop_early`).
    """
    if not job.stop_early:
        return False
    try:
        prog = ledger.progress(run_id)
        if prog.status not in STOPPABLE:
            return False
        tolerated = job.tolerated_failure_pct
        if not cannot_succeed(prog.failed, prog.expected, split_done=prog.split_done, tolerated_failure_pct=tolerated):
            return False
        pct = 100.0 * prog.failed / prog.expected if prog.expected else 100.0
        left = max(prog.expected - prog.succeeded - prog.failed, 0)
        error = (
            f"stopped early: {prog.failed} of {prog.expected} tasks failed ({pct:.2f}%), above the tolerated "
            f"{tolerated}%, so the run cannot succeed; {left} tasks were not attempted "
            f"(list them with `microprocess tasks {run_id} --state NOT_ATTEMPTED`)"
        )
        if not stop_run(ledger, run_id, error):
            return False
        if reduce_sender is not None:
            enqueue_stopped_reduce(reduce_sender, ledger, job, run_id)
    except Exception:
        log.exception("stop-early check of run %s failed; the next failure checks again", run_id)
        return False
    log.warning("run %s: %s", run_id, error, extra={"run_id": run_id, "job": job.name})
    if emit is not None:
        emit("RunsStoppedEarly", 1, job.name, run_id=run_id)
        emit("ReducesClaimed", 1, job.name, run_id=run_id)
    return True
