"""`microprocess.ledger.tasks`: task records written once (batched INSERT, write tokens) (moto)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from microprocess.ledger import (
    CURSOR_DONE,
    Ledger,
    RunStatus,
    TaskOutcome,
    TaskState,
)
from microprocess.pipeline.envelope import shard_of
from tests.ledger_scenarios import JOB, K, ambiguous_ledger, outcome, record, split

# ------------------------------------------------- rare faults (ARCHITECTURE §3.8)


def test_writes_retried_after_they_were_applied_count_once_and_claim_at_the_end(ledger_table: str) -> None:
    # GIVEN a run of 20 tasks whose every ledger write is applied, then retried by the SDK
    amb, injector = ambiguous_ledger(ledger_table)
    amb.create_run("r1", JOB)
    split(amb, "r1", [20])
    assert amb.finish_split("r1") is False
    # WHEN the tasks complete in batches of 5
    claims = record(amb, "r1", [outcome(i) for i in range(20)], batch=5)
    # THEN the fault fired, every task is new and counted once, and only the last batch claims
    assert (
        injector.fired["applied_then_error at UpdateItem"] > 0 and injector.fired["applied_then_error at PutItem"] > 0
    )
    prog = amb.progress("r1")
    assert (prog.expected, prog.succeeded, prog.failed) == (20, 20, 0)
    assert claims == [False, False, False, True]
    assert amb.require_run("r1").status is RunStatus.REDUCING


def test_claims_retried_after_they_were_applied_are_still_won(ledger_table: str) -> None:
    amb, _ = ambiguous_ledger(ledger_table)
    amb.create_run("r1", JOB)
    assert amb.account_page("r1", segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=0)
    # an empty run: the claim of the reduce (retried after it was applied) is won once
    assert amb.finish_split("r1") is True
    assert amb.claim_finalize("r1") is True and amb.claim_finalize("r1") is False
    assert amb.record_email_sent("r1", "m-1") is True and amb.record_email_sent("r1", "m-2") is False
    assert amb.finish_run("r1", tolerated_failure_pct=1.0, report_uri="s3://b/r/") is RunStatus.SUCCEEDED


def test_a_result_over_the_item_limit_fails_its_task_and_the_batch_is_counted(ledger: Ledger) -> None:
    # GIVEN a batch of 5 whose third result is 500 KB (DynamoDB items are at most 400 KB)
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [5])
    ledger.finish_split("r1")
    outs = [outcome(i) for i in range(5)]
    big = outs[2]
    outs[2] = TaskOutcome(big.task_id, big.shard, TaskState.SUCCEEDED, 1, big.item_id, result={"blob": "x" * 500_000})
    # WHEN it is recorded
    res = ledger.record_outcomes("r1", K, outs)
    # THEN every task is new and counted, the big one FAILED with a reason naming the limit and the fix
    assert sorted(res.newly_recorded) == sorted(o.task_id for o in outs) and res.claimed_reduce
    prog = ledger.progress("r1")
    assert (prog.succeeded, prog.failed) == (4, 1)
    [failed] = list(ledger.iter_failed("r1"))
    assert failed.task_id == big.task_id and "400 KB" in (failed.error or "") and "S3" in (failed.error or "")


def test_the_item_size_error_of_dynamodb_also_fails_only_that_task(ddb: Any, ledger_table: str) -> None:
    # GIVEN a table that refuses an item our estimate let through (DynamoDB's own measure)
    class Strict:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def put_item(self, **kw: Any) -> Any:
            from botocore.exceptions import ClientError

            if len(kw["Item"].get("result", {}).get("S", "")) > 100_000:
                raise ClientError(
                    {
                        "Error": {
                            "Code": "ValidationException",
                            "Message": "Item size has exceeded the maximum allowed size",
                        }
                    },
                    "PutItem",
                )
            return self.inner.put_item(**kw)

    strict = Ledger(ledger_table, client=Strict(ddb))
    strict.create_run("r1", JOB)
    split(strict, "r1", [2])
    out = TaskOutcome(
        "0-000000001", shard_of("0-000000001", JOB.shard_count), TaskState.SUCCEEDED, 1, result="y" * 200_000
    )
    res = strict.record_outcomes("r1", K, [outcome(0), out])
    assert len(res.newly_recorded) == 2
    assert (strict.progress("r1").succeeded, strict.progress("r1").failed) == (1, 1)


# ----------------------------------------------------------------------------- task records in one call


class _CallLog:
    """A client that records the write calls it passes on (and can refuse INSERT statements)."""

    def __init__(self, ddb: Any, refuse: set[str] | None = None) -> None:
        self._ddb = ddb
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.refuse = refuse or set()  # task record sort keys whose INSERT is answered "throttled"

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ddb, name)

    def put_item(self, **kw: Any) -> Any:
        self.calls.append(("PutItem", kw))
        return self._ddb.put_item(**kw)

    def get_item(self, **kw: Any) -> Any:
        self.calls.append(("GetItem", kw))
        return self._ddb.get_item(**kw)

    def batch_execute_statement(self, **kw: Any) -> Any:
        self.calls.append(("BatchExecuteStatement", kw))
        refused = [s for s in kw["Statements"] if s["Parameters"][1]["S"] in self.refuse]
        kept = [s for s in kw["Statements"] if s not in refused]
        answers = iter(self._ddb.batch_execute_statement(Statements=kept)["Responses"] if kept else [])
        throttled = {"Error": {"Code": "ThrottlingError", "Message": "slow down"}}
        return {"Responses": [throttled if s in refused else next(answers) for s in kw["Statements"]]}

    def ops(self) -> list[str]:
        return [op for op, _ in self.calls]

    def task_ops(self) -> list[str]:
        """The calls on task records (not the run's epoch read or its counters)."""
        return [
            op for op, kw in self.calls if op == "BatchExecuteStatement" or "T#" in str(kw.get("Key") or kw.get("Item"))
        ]


def _finished_run(ledger: Ledger, n: int) -> None:
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [n])
    ledger.finish_split("r1")
    if isinstance(ledger.client, _CallLog):
        ledger.client.calls.clear()


def test_a_batchs_successes_are_written_in_one_call_and_counted_once(ddb: Any, ledger_table: str) -> None:
    client = _CallLog(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(3))
    _finished_run(ledger, 40)
    # WHEN a batch of 10 successes is recorded THEN its records go in one BatchExecuteStatement
    res = ledger.record_outcomes("r1", K, [outcome(i) for i in range(10)])
    assert sorted(res.newly_recorded) == sorted(outcome(i).task_id for i in range(10))
    assert client.task_ops() == ["BatchExecuteStatement"]
    assert "PutItem" not in client.ops()
    ((_, call),) = [c for c in client.calls if c[0] == "BatchExecuteStatement"]
    assert all(s["Statement"].startswith('INSERT INTO "ledger" VALUE {') for s in call["Statements"])
    assert all("SUCCEEDED" not in s["Statement"] for s in call["Statements"])  # values are parameters only
    # AND a second delivery of the same batch (plus 2 new tasks) finds the records: only the new ones count
    client.calls.clear()
    again = ledger.record_outcomes("r1", K, [outcome(i) for i in range(12)])
    assert sorted(again.duplicates) == sorted(outcome(i).task_id for i in range(10))
    assert sorted(again.newly_recorded) == [outcome(10).task_id, outcome(11).task_id]
    # (each duplicate's token is read: it might have been this call's own record, retried by the SDK)
    assert client.task_ops() == ["BatchExecuteStatement"] + ["GetItem"] * 10
    assert ledger.progress("r1").succeeded == 12


def test_more_than_25_successes_take_more_calls_and_failures_and_big_records_go_alone(
    ddb: Any, ledger_table: str
) -> None:
    client = _CallLog(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(3))
    _finished_run(ledger, 40)
    big = TaskOutcome(outcome(30).task_id, outcome(30).shard, TaskState.SUCCEEDED, 1, None, result={"blob": "x" * 5000})
    batch = [outcome(i) for i in range(27)] + [outcome(27, TaskState.FAILED), big]
    res = ledger.record_outcomes("r1", K, batch)
    assert len(res.newly_recorded) == 29
    inserts = [kw for op, kw in client.calls if op == "BatchExecuteStatement"]
    assert [len(kw["Statements"]) for kw in inserts] == [25, 2]
    puts = [kw["Item"]["sk"]["S"] for op, kw in client.calls if op == "PutItem"]
    # the failure's F# item, then its record; the big success alone
    assert sorted(puts) == sorted([f"F#{outcome(27).task_id}", f"T#{outcome(27).task_id}", f"T#{big.task_id}"])
    p = ledger.progress("r1")
    assert (p.succeeded, p.failed) == (28, 1)


def test_a_statement_refused_for_another_reason_is_written_alone_and_said(
    ddb: Any, ledger_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN DynamoDB answers one INSERT of a batch "throttled" (a per-statement error)
    refused = f"T#{outcome(4).task_id}"
    client = _CallLog(ddb, refuse={refused})
    ledger = Ledger(ledger_table, client=client, rng=random.Random(3))
    _finished_run(ledger, 10)
    res = ledger.record_outcomes("r1", K, [outcome(i) for i in range(10)])
    # THEN that record is written by a conditional put, the warning names it, all 10 count once
    assert len(res.newly_recorded) == 10
    assert [kw["Item"]["sk"]["S"] for op, kw in client.calls if op == "PutItem"] == [refused]
    assert any(refused in r.getMessage() and "alone" in r.getMessage() for r in caplog.records)
    assert ledger.progress("r1").succeeded == 10
    assert res.claimed_reduce


def test_a_batch_the_sdk_sent_twice_after_it_was_applied_counts_once(ddb: Any, ledger_table: str) -> None:
    # GIVEN every write is applied, then retried by the SDK (a 500 or a timeout after DynamoDB carried it out)
    from microprocess.chaos.faults import FaultConfig, FaultInjector

    injector = FaultInjector(FaultConfig(applied_then_error=1.0))
    injector.install_ambiguous_writes(ddb)
    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(3))
    _finished_run(ledger, 10)
    res = ledger.record_outcomes("r1", K, [outcome(i) for i in range(10)])
    # THEN the retried INSERTs find their own records (by the write token) and all 10 count once
    assert injector.fired["applied_then_error at BatchExecuteStatement"] == 1  # the fault fired on the batch
    assert len(res.newly_recorded) == 10 and not res.duplicates
    assert ledger.progress("r1").succeeded == 10
    assert res.claimed_reduce


def test_a_store_without_partiql_gets_every_record_by_a_conditional_put(ddb: Any, ledger_table: str) -> None:
    # GIVEN a DynamoDB-compatible store that refuses BatchExecuteStatement as a whole
    from botocore.exceptions import ClientError

    class NoPartiQL(_CallLog):
        def batch_execute_statement(self, **kw: Any) -> Any:
            self.calls.append(("BatchExecuteStatement", kw))
            error = {"Error": {"Code": "UnknownOperationException", "Message": "no"}}
            raise ClientError(error, "BatchExecuteStatement")  # type: ignore[arg-type]

    client = NoPartiQL(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(3))
    _finished_run(ledger, 10)
    res = ledger.record_outcomes("r1", K, [outcome(i) for i in range(10)])
    # THEN each record goes by a conditional put and all count once
    assert client.task_ops().count("PutItem") == 10
    assert len(res.newly_recorded) == 10 and ledger.progress("r1").succeeded == 10
