"""The forwarder's admission gates (`microprocess.pipeline.admission`), one at a time and in order.

Pure tests: the gates read the jobs, a run cache and an item fetcher through `Lookups`; here a
dict of runs stands in for the ledger (each read counted), so each gate is checked without AWS.
The end-to-end behaviour of the same checks is in test_functions.py and test_control_pause.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from microprocess.declarations import ReduceMode
from microprocess.ledger import RunRecord, RunStatus
from microprocess.pipeline import admission
from microprocess.pipeline.admission import (
    GATES,
    Acknowledge,
    Admission,
    DeadLetter,
    Defer,
    Lookups,
    Park,
    Work,
    admit,
)
from microprocess.pipeline.envelope import TaskEnvelope, TaskKind, shard_of
from tests.functions_harness import JOB, REGISTRY, sqs_record

SHARDS = JOB.shard_count


class Runs:
    """A run cache over a dict: `cached` is what a warm cache holds, `ledger` what a fresh read finds."""

    def __init__(self, *runs: RunRecord) -> None:
        self.cached = {r.run_id: r for r in runs}
        self.ledger = dict(self.cached)
        self.fresh_reads = 0

    def get(self, run_id: str, *, fresh: bool = False) -> RunRecord | None:
        if fresh:
            self.fresh_reads += 1
            self.cached[run_id] = self.ledger[run_id]
        return self.cached.get(run_id)


def run(
    status: RunStatus = RunStatus.RUNNING, *, accounted: int = 10, split_done: bool = False, **kw: Any
) -> RunRecord:
    """A run of JOB with one segment `0` whose first `accounted` tasks are accounted."""
    fields: dict[str, Any] = {
        "run_id": "r1",
        "job": JOB.name,
        "status": status,
        "shard_count": SHARDS,
        "counter_count": JOB.counter_count,
        "expected": accounted,
        "split_done": split_done,
        "cursors": {"0": "p1"},
        "seg_counts": {"0": accounted},
        "created_at": "2026-12-07T00:00:00Z",
    }
    return RunRecord(**{**fields, **kw})


def task(seq: int = 1, *, run_id: str = "r1", shard: int | None = None, **kw: Any) -> TaskEnvelope:
    task_id = f"0-{seq:09d}"
    sh = shard_of(task_id, SHARDS) if shard is None else shard
    item = kw.pop("item", None) if "item_ref" in kw else kw.pop("item", {"company_id": f"C{seq}"})
    return TaskEnvelope(job=JOB.name, run_id=run_id, task_id=task_id, shard=sh, item=item, **kw)


def reduce_msg(kind: TaskKind, shard: int = 0) -> TaskEnvelope:
    return TaskEnvelope(kind=kind, job=JOB.name, run_id="r1", task_id=f"{kind}-{shard}", shard=shard)


def lookups(runs: Runs, fetch: Any = None, claims_bucket: str = "") -> Lookups:
    return Lookups(jobs=REGISTRY, runs=runs, fetch=fetch or (lambda ref: {"fetched": ref}), claims_bucket=claims_bucket)  # type: ignore[arg-type]


def at(env: TaskEnvelope, r: RunRecord | None = None, **kw: Any) -> Admission:
    """An admission that has passed parse, known_job and known_run."""
    return Admission(sqs_record(env.to_json()), parsed=env, declared=JOB, current=r or run(), **kw)


# ---------------------------------------------------------------- one test per gate


def test_parse_dead_letters_a_body_that_is_not_an_envelope() -> None:
    a = Admission(sqs_record("not json"))
    verdict = admission.parse(a, lookups(Runs()))
    assert isinstance(verdict, DeadLetter) and verdict.reason.startswith("malformed message: body is not JSON")
    ok = Admission(sqs_record(task().to_json()))
    assert admission.parse(ok, lookups(Runs())) is None and ok.envelope == task()


def test_known_job_dead_letters_an_undeclared_job() -> None:
    a = Admission(sqs_record("{}"), parsed=task().model_copy(update={"job": "nope"}))
    verdict = admission.known_job(a, lookups(Runs()))
    assert isinstance(verdict, DeadLetter) and "nope" in verdict.reason
    b = Admission(sqs_record("{}"), parsed=task())
    assert admission.known_job(b, lookups(Runs())) is None and b.job is JOB


def test_known_run_dead_letters_a_run_the_ledger_does_not_have() -> None:
    a = Admission(sqs_record("{}"), parsed=task(run_id="ghost"), declared=JOB)
    verdict = admission.known_run(a, lookups(Runs(run())))
    assert verdict == DeadLetter("malformed message: unknown run 'ghost' (not in the ledger)")
    b = Admission(sqs_record("{}"), parsed=task(), declared=JOB)
    assert admission.known_run(b, lookups(Runs(run()))) is None and b.run.run_id == "r1"


def test_confirm_pause_rereads_a_paused_run_and_marks_it_only_when_still_paused() -> None:
    # GIVEN a cache that says paused, and a ledger where the run is paused / resumed
    for now, paused in ((RunStatus.PAUSED, True), (RunStatus.RUNNING, False)):
        runs = Runs(run(RunStatus.PAUSED))
        runs.ledger["r1"] = run(now)
        a = at(task(), runs.cached["r1"])
        assert admission.confirm_pause(a, lookups(runs)) is None
        assert (a.paused, a.run.status, runs.fresh_reads) == (paused, now, 1)
    # AND a running run is not re-read
    runs = Runs(run())
    assert admission.confirm_pause(at(task()), lookups(runs)) is None and runs.fresh_reads == 0


def test_not_cancelled_acknowledges_a_cancelled_runs_messages() -> None:
    assert admission.not_cancelled(at(task(), run(RunStatus.CANCELLED)), lookups(Runs())) == Acknowledge(
        "run cancelled"
    )
    assert admission.not_cancelled(at(task()), lookups(Runs())) is None


@pytest.mark.parametrize("status", [RunStatus.REDUCING, RunStatus.SUCCEEDED, RunStatus.FAILED])
def test_not_late_acknowledges_a_task_of_a_reducing_or_ended_run(status: RunStatus) -> None:
    assert isinstance(admission.not_late(at(task(), run(status)), lookups(Runs())), Acknowledge)
    # a reduce message of a reducing run goes on
    assert admission.not_late(at(reduce_msg(TaskKind.REDUCE_PART), run(status)), lookups(Runs())) is None


def test_shard_and_ownership_dead_letters_a_stranger_after_rereading_a_cache_that_may_be_behind() -> None:
    # GIVEN a task beyond the cached accounting, which the ledger has accounted since
    runs = Runs(run(accounted=1))
    runs.ledger["r1"] = run(accounted=10)
    a = at(task(5), runs.cached["r1"])
    # THEN it is re-read and let through
    assert admission.shard_and_ownership(a, lookups(runs)) is None and runs.fresh_reads == 1
    # AND a task on the wrong shard, or of a segment the run does not have, is dead-lettered
    wrong = (shard_of(task(5).task_id, SHARDS) + 1) % SHARDS
    for env in (task(5, shard=wrong), task(5).model_copy(update={"task_id": "9-000000005"})):
        verdict = admission.shard_and_ownership(at(env), lookups(Runs(run())))
        assert isinstance(verdict, DeadLetter) and "is not part of run 'r1'" in verdict.reason
    # AND a reduce part of a shard the run does not have
    verdict = admission.shard_and_ownership(at(reduce_msg(TaskKind.REDUCE_PART, SHARDS)), lookups(Runs(run())))
    assert isinstance(verdict, DeadLetter) and f"names shard {SHARDS}" in verdict.reason


def test_park_paused_parks_only_a_run_the_pause_gate_found_paused() -> None:
    env = task()
    assert admission.park_paused(at(env, run(RunStatus.PAUSED), paused=True), lookups(Runs())) == Park(env)
    # a run paused after the pause gate's read is not parked (pushed within the cache's 2 s, as before)
    assert admission.park_paused(at(env, run(RunStatus.PAUSED), paused=False), lookups(Runs())) is None


def test_accounted_defers_a_task_whose_page_is_not_accounted_yet() -> None:
    assert admission.accounted(at(task(50), run(accounted=10)), lookups(Runs())) == Defer()
    assert admission.accounted(at(task(5), run(accounted=10)), lookups(Runs())) is None


def test_reduce_in_time_lets_a_reduce_message_through_only_while_it_can_act() -> None:
    def verdict(kind: TaskKind, status: RunStatus, mode: ReduceMode = ReduceMode.SERVICE) -> object:
        a = at(reduce_msg(kind) if kind is not TaskKind.COMPLETION else completion(), run(status))
        a.declared = JOB.model_copy(update={"reduce": mode})
        return admission.reduce_in_time(a, lookups(Runs()))

    assert verdict(TaskKind.REDUCE_PART, RunStatus.REDUCING) is None
    assert isinstance(verdict(TaskKind.REDUCE_PART, RunStatus.RUNNING), Acknowledge)
    assert isinstance(verdict(TaskKind.REDUCE_PART, RunStatus.SUCCEEDED), Acknowledge)
    assert verdict(TaskKind.COMPLETION, RunStatus.FAILED) is None
    assert verdict(TaskKind.FINALIZE, RunStatus.SUCCEEDED, ReduceMode.PLATFORM) is None
    assert isinstance(verdict(TaskKind.FINALIZE, RunStatus.SUCCEEDED), Acknowledge)
    assert admission.reduce_in_time(at(task(), run(RunStatus.RUNNING)), lookups(Runs())) is None


def completion() -> TaskEnvelope:
    return TaskEnvelope(kind=TaskKind.COMPLETION, job=JOB.name, run_id="r1", task_id="completion", shard=0, item={})


def test_own_claim_refuses_another_bucket_job_or_run_and_follows_a_retry_chain() -> None:
    retry = run(run_id="r2", source_run="r1")
    runs = Runs(run(), retry)

    def claim(ref: str, r: RunRecord = retry) -> object:
        env = task(1, run_id=r.run_id, item_ref=ref)
        return admission.own_claim(at(env, r), lookups(runs, claims_bucket="platform"))

    assert claim("s3://platform/claims/credit-scores/r1/0-1.json") is None  # the run it retries
    assert claim("s3://platform/claims/credit-scores/r2/0-1.json") is None  # its own
    for ref, says in (
        ("s3://other/claims/credit-scores/r2/x.json", "outside the platform's claims"),
        ("s3://platform/claims/other-job/r2/x.json", "not a claim of job 'credit-scores'"),
        ("s3://platform/claims/credit-scores/r9/x.json", "belongs to run 'r9'"),
    ):
        verdict = claim(ref)
        assert isinstance(verdict, DeadLetter) and says in verdict.reason


def test_fetch_item_reads_a_reference_and_dead_letters_only_an_unreadable_one() -> None:
    class S3Error(Exception):
        def __init__(self, code: str) -> None:
            self.response = {"Error": {"Code": code}}

    ref = "s3://platform/claims/credit-scores/r1/0-1.json"
    a = at(task(1, item_ref=ref))
    assert admission.fetch_item(a, lookups(Runs())) is None and a.item == {"fetched": ref}
    inline = at(task(1))
    assert admission.fetch_item(inline, lookups(Runs())) is None and inline.item == {"company_id": "C1"}

    def gone(_ref: str) -> Any:
        raise S3Error("NoSuchKey")

    verdict = admission.fetch_item(at(task(1, item_ref=ref)), lookups(Runs(), fetch=gone))
    assert isinstance(verdict, DeadLetter) and "unreadable (NoSuchKey)" in verdict.reason

    def throttled(_ref: str) -> Any:
        raise S3Error("SlowDown")

    with pytest.raises(S3Error):  # retried, not dead-lettered
        admission.fetch_item(at(task(1, item_ref=ref)), lookups(Runs(), fetch=throttled))


# ---------------------------------------------------------------- the order


def test_the_gates_run_in_this_order() -> None:
    assert [g.__name__ for g in GATES] == [
        "parse",
        "known_job",
        "known_run",
        "confirm_pause",
        "not_cancelled",
        "not_late",
        "shard_and_ownership",
        "park_paused",
        "accounted",
        "service_not_waiting",
        "reduce_in_time",
        "own_claim",
        "fetch_item",
    ]


def test_service_not_waiting_holds_a_task_while_its_service_asks_every_job_to_wait() -> None:
    from dataclasses import replace

    from microprocess.pipeline.admission import Wait

    asked: list[str] = []

    def wait(record: dict[str, Any], job: Any) -> float | None:
        asked.append(job.service)
        return 42.0

    waiting = replace(lookups(Runs()), service_wait=wait)
    verdict = admission.service_not_waiting(at(task(1)), waiting)
    assert verdict == Wait(42.0, JOB.name) and asked == [JOB.service]
    # a reduce-queue message is not held; no wait, or no shedding at all, lets the task on
    assert admission.service_not_waiting(at(reduce_msg(TaskKind.REDUCE_PART)), waiting) is None
    assert admission.service_not_waiting(at(task(1)), replace(waiting, service_wait=lambda r, j: None)) is None
    assert admission.service_not_waiting(at(task(1)), lookups(Runs())) is None


def test_a_paused_runs_message_is_checked_for_its_shard_and_ownership_before_it_is_parked() -> None:
    # GIVEN a paused run and a message of a shard it does not have (resume could never re-send it)
    runs = Runs(run(RunStatus.PAUSED))
    stranger = reduce_msg(TaskKind.REDUCE_PART, SHARDS)
    # THEN it is dead-lettered, not parked; a task on its own shard is parked
    assert isinstance(admit(sqs_record(stranger.to_json()), lookups(runs)), DeadLetter)
    own = task(5)
    assert admit(sqs_record(own.to_json()), lookups(runs)) == Park(own)
    # AND a task the run does not own (another segment) is dead-lettered too
    foreign = own.model_copy(update={"task_id": "9-000000005", "shard": shard_of("9-000000005", SHARDS)})
    assert isinstance(admit(sqs_record(foreign.to_json()), lookups(runs)), DeadLetter)


def test_a_run_cancelled_while_paused_is_acknowledged_not_pushed() -> None:
    # GIVEN a warm cache that still says paused, and a ledger where the paused run was cancelled
    runs = Runs(run(RunStatus.PAUSED))
    runs.ledger["r1"] = run(RunStatus.CANCELLED)
    # THEN the pause gate's fresh read comes before the cancel check: acknowledged without a call
    assert admit(sqs_record(task(5).to_json()), lookups(runs)) == Acknowledge("run cancelled")


def test_a_message_that_passes_every_gate_is_work_to_push() -> None:
    record = sqs_record(task(5).to_json())
    work = admit(record, lookups(Runs(run())))
    assert isinstance(work, Work) and (work.envelope, work.item, work.record) == (
        task(5),
        {"company_id": "C5"},
        record,
    )


def test_a_late_duplicate_of_a_stranger_is_acknowledged_before_the_ownership_check() -> None:
    # As before the gates: a task of a reducing run is a late duplicate, whatever it names.
    done = run(RunStatus.REDUCING, split_done=True)
    assert admit(sqs_record(task(50).to_json()), lookups(Runs(done))) == Acknowledge("late duplicate of a task")


def test_an_admission_reads_what_a_gate_before_it_found() -> None:
    with pytest.raises(AssertionError, match="the parse gate comes first"):
        admission.known_job(Admission(sqs_record("{}")), lookups(Runs()))
    assert replace(at(task()), paused=True).paused
