"""Per-item lookup: by task id and item id in O(1) reads, listings by state, PENDING and NOT_ATTEMPTED."""

from __future__ import annotations

from typing import Any

from microprocess.control.lookup import ITEM_INDEX_PARTITIONS, RunTasks, TaskView, index_entries, not_attempted
from microprocess.ledger import RunStatus
from tests.functions_harness import JOB, Behaviour, Stack, job_with

ENOUGH_TIME = lambda: 900_000  # noqa: E731 - remaining Lambda time, ms


def companies(n: int) -> list[dict[str, Any]]:
    return [{"company_id": f"C{i:07d}"} for i in range(n)]


class CountingClient:
    """Counts the DynamoDB calls a lookup makes (it must not read the run)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.calls.append(name)
        return getattr(self.inner, name)


def test_index_entries_skip_items_without_an_id() -> None:
    # GIVEN a page at position 7 of segment 2 where one item has no id field
    items = [{"company_id": "A"}, {"other": 1}, "plain", {"company_id": 42}]
    # WHEN it is indexed THEN only the items with an id are, under their positional task ids
    assert index_entries("company_id", "2", 7, items) == [("A", "2-000000007"), ("42", "2-000000010")]


def test_an_item_is_found_by_id_pending_then_failed_with_its_error_and_attempts(stack: Stack) -> None:
    # GIVEN a split run of 40 companies; the service rejects C0000007 for good
    stack.service.behaviours["C0000007"] = Behaviour(status=422)
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(40)})
    tasks = RunTasks(stack.ledger)
    run = stack.ledger.require_run("r1")
    # WHEN the item is looked up before any push THEN it is PENDING with its task id
    (pending,) = tasks.item(run, "C0000007")
    assert (pending.state, pending.item_id, pending.task_id) == (TaskView.PENDING, "C0000007", "0-000000007")
    # WHEN the run has been forwarded THEN the item is FAILED with the service's error and one attempt
    stack.drive(stack.forwarder().handle, stack.task_queue)
    run = stack.ledger.require_run("r1")
    (failed,) = tasks.item(run, "C0000007")
    assert failed.state is TaskView.FAILED
    assert failed.attempts == 1 and "HTTP 422" in (failed.error or "")
    assert failed.finished_at and failed.seconds_after_start is not None and failed.seconds_after_start >= 0
    (ok,) = tasks.item(run, "C0000008")
    assert ok.state is TaskView.SUCCEEDED and ok.result == {"company_id": "C0000008", "score": 700}


def test_a_lookup_by_item_id_reads_one_index_partition_and_one_task_record(stack: Stack) -> None:
    # GIVEN a forwarded run of 60 companies
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(60)})
    stack.drive(stack.forwarder().handle, stack.task_queue)
    run = stack.ledger.require_run("r1")
    counting = CountingClient(stack.ddb)
    stack.ledger._client = counting
    # WHEN one item is looked up
    (found,) = RunTasks(stack.ledger).item(run, "C0000033")
    # THEN one Query (its index partition) and one GetItem (its task record): no scan of the run
    assert found.task_id == "0-000000033" and found.state is TaskView.SUCCEEDED
    assert sorted(counting.calls) == ["get_item", "query"]


def test_an_unknown_item_or_task_is_not_found(stack: Stack) -> None:
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(5)})
    run = stack.ledger.require_run("r1")
    tasks = RunTasks(stack.ledger)
    assert tasks.item(run, "C9999999") == []
    assert tasks.item(run, "C000000") == []  # a prefix of real ids is another item
    assert tasks.task(run, "0-000000005") is None  # past the end of the segment
    assert tasks.task(run, "nonsense") is None


def test_an_item_id_that_occurs_twice_has_two_tasks(stack: Stack) -> None:
    stack.split(
        {"job": JOB.name, "run_id": "r1", "items": [{"company_id": "X"}, {"company_id": "Y"}, {"company_id": "X"}]}
    )
    run = stack.ledger.require_run("r1")
    assert [d.task_id for d in RunTasks(stack.ledger).item(run, "X")] == ["0-000000000", "0-000000002"]


def test_a_job_without_the_index_writes_no_index_records(stack: Stack) -> None:
    # GIVEN a job that opts out of the item index
    job, registry = job_with(item_index=False)
    stack.split({"job": job.name, "run_id": "r1", "items": companies(10)}, jobs=registry)
    run = stack.ledger.require_run("r1")
    # THEN an item cannot be found by its id, but its task still can
    assert RunTasks(stack.ledger).item(run, "C0000003") == []
    detail = RunTasks(stack.ledger).task(run, "0-000000003")
    assert detail is not None and detail.state is TaskView.PENDING
    assert all(
        stack.ddb.query(
            TableName="ledger",
            KeyConditionExpression="pk = :p",
            ExpressionAttributeValues={":p": {"S": f"RUN#r1#I{p}"}},
        )["Count"]
        == 0
        for p in range(ITEM_INDEX_PARTITIONS)
    )


def test_pending_lists_exactly_the_split_tasks_without_a_record_and_terminal_states_list_theirs(stack: Stack) -> None:
    # GIVEN a run of 30 companies, two rejected, of which only the first 20 messages are forwarded
    for c in ("C0000003", "C0000011"):
        stack.service.behaviours[c] = Behaviour(status=400)
    stack.split({"job": JOB.name, "run_id": "r1", "items": companies(30)})
    fwd = stack.forwarder()
    handled = 0
    while handled < 20:
        records = stack.receive(stack.task_queue)[: 20 - handled]
        fwd.handle({"Records": records})
        for r in records:
            stack.sqs.delete_message(QueueUrl=stack.task_queue, ReceiptHandle=r["receiptHandle"])
        handled += len(records)
    run = stack.ledger.require_run("r1")
    tasks = RunTasks(stack.ledger)
    done = {d.task_id for s in (TaskView.SUCCEEDED, TaskView.FAILED) for d in tasks.terminal(run, _state(s))}
    # WHEN the pending tasks are listed
    pending = tasks.unfinished_details(run)
    # THEN they are the 10 split tasks without a record, each with its item id
    assert len(done) == 20
    assert {d.task_id for d in pending} == {f"0-{i:09d}" for i in range(30)} - done
    assert all(d.state is TaskView.PENDING and d.item_id == f"C{int(d.task_id[2:]):07d}" for d in pending)
    failed = {d.item_id for d in tasks.terminal(run, _state(TaskView.FAILED))}
    assert failed <= {"C0000003", "C0000011"}
    # AND once the run is cancelled, the same tasks are NOT_ATTEMPTED
    stack.ledger.cancel("r1")
    assert set(not_attempted(stack.ledger, "r1")) == {d.task_id for d in pending}
    cancelled = stack.ledger.require_run("r1")
    assert cancelled.status is RunStatus.CANCELLED
    assert {d.state for d in tasks.unfinished_details(cancelled, limit=3)} == {TaskView.NOT_ATTEMPTED}
    assert len(tasks.unfinished_details(cancelled, limit=3)) == 3


def _state(view: TaskView) -> Any:
    from microprocess.ledger import TaskState

    return TaskState(str(view))
