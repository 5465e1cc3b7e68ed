"""`microprocess.ledger.counters`: spread counters, no hot key, and their markers (moto)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from microprocess.ledger import (
    CURSOR_DONE,
    Ledger,
    TaskState,
)
from tests.ledger_scenarios import JOB, K, _UpdateLog, counter_markers, outcome, record, split


def test_completions_split_over_counters_when_rooms_are_small(ledger: Ledger) -> None:
    # GIVEN 3 tasks spread over 16 counters (rooms of 0 or 1) WHEN one batch of 3 completes
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [3])
    ledger.finish_split("r1")
    res = ledger.record_outcomes("r1", K, [outcome(i) for i in range(3)])
    # THEN it is counted across counters and claims the reduce
    assert res.counted and res.claimed_reduce
    assert ledger.progress("r1").succeeded == 3


class _CountingClient:
    """Wraps a DynamoDB client and counts writes per item key."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: Counter[tuple[str, str]] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in ("put_item", "update_item", "delete_item"):

            def wrapped(**kw: Any) -> Any:
                key = kw.get("Key") or kw["Item"]
                self.writes[(key["pk"]["S"], key["sk"]["S"])] += 1
                return attr(**kw)

            return wrapped
        if name == "transact_write_items":

            def wrapped_tx(**kw: Any) -> Any:
                for action in kw["TransactItems"]:
                    body = next(iter(action.values()))
                    key = body.get("Key") or body.get("Item")
                    self.writes[(key["pk"]["S"], key["sk"]["S"])] += 1
                return attr(**kw)

            return wrapped_tx
        return attr


def test_no_hot_key_over_10000_completions(ddb: Any, ledger_table: str) -> None:
    # GIVEN a ledger whose writes are counted per item
    client = _CountingClient(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(3))
    n = 10_000
    ledger.create_run("hot", JOB)
    # WHEN a splitter accounts pages of 250 while forwarders record batches of 10
    outs = [outcome(i, TaskState.FAILED if i % 500 == 0 else TaskState.SUCCEEDED) for i in range(n)]
    cursor = ""
    for p in range(n // 250):
        nxt = CURSOR_DONE if p == n // 250 - 1 else f"p{p + 1}"
        ledger.account_page("hot", segment="0", cursor_from=cursor, cursor_to=nxt, count=250)
        cursor = nxt
        if p == n // 250 - 1:
            ledger.finish_split("hot")
        claims = record(ledger, "hot", outs[p * 250 : (p + 1) * 250])
    # THEN the run completes and no item took more than 20 writes per 1,000 completions
    assert claims[-1] is True
    hottest_key, hottest = client.writes.most_common(1)[0]
    per_1000 = hottest * 1000 / n
    print(f"hottest item {hottest_key}: {hottest} writes = {per_1000:.1f} per 1,000 completions")
    assert per_1000 <= 20, f"{hottest_key} took {hottest} writes over {n} completions"


def test_a_writer_removes_its_marker_with_its_next_update_one_write_per_batch(ddb: Any, ledger_table: str) -> None:
    # GIVEN one process recording 4 batches (fewer than it stays on one counter)
    client = _UpdateLog(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(5))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [40])
    for b in range(4):
        ledger.record_outcomes("r1", K, [outcome(b * 10 + i) for i in range(10)])
        # THEN after each batch the counter holds exactly one marker: this batch's
        markers = {k: m for k, m in counter_markers(ddb, ledger_table).items() if m}
        assert len(markers) == 1 and len(next(iter(markers.values()))) == 1
    # AND each batch was one counter write (no separate removal), all on one counter
    counter_writes = [u for u in client.updates if u["Key"]["sk"]["S"] == "COUNT"]
    assert len(counter_writes) == 4
    assert len({u["Key"]["pk"]["S"] for u in counter_writes}) == 1
    assert all("REMOVE" in u["UpdateExpression"] for u in counter_writes[1:])
    assert ledger.progress("r1").succeeded == 40


def test_a_writer_moves_to_another_counter_and_takes_its_marker_away(ddb: Any, ledger_table: str) -> None:
    # GIVEN one process recording more batches than it stays on one counter
    from microprocess.ledger.counters import HOME_BATCHES

    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(7))
    ledger.create_run("r1", JOB)
    n = HOME_BATCHES * 6
    split(ledger, "r1", [n])
    for b in range(n):
        ledger.record_outcomes("r1", K, [outcome(b)])
    # THEN it used several counters, and only the last one holds a marker (its last batch's)
    items = ddb.scan(TableName=ledger_table)["Items"]
    used = [it for it in items if it["sk"]["S"] == "COUNT" and int(it.get("done", {"N": "0"})["N"])]
    assert len(used) >= 3
    markers = counter_markers(ddb, ledger_table)
    assert sum(len(m) for m in markers.values()) == 1
    assert ledger.progress("r1").succeeded == n


def test_markers_over_an_hour_old_go_with_the_next_update_that_sees_them(
    ddb: Any, ledger_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import microprocess.ledger.counters as table_module

    ledger = Ledger(ledger_table, client=ddb, rng=random.Random(1))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [30])
    # GIVEN markers left two hours ago by writers that died, on every counter
    now = table_module.time.time()
    old = [table_module.marker_name(now - 7200) for _ in range(3)]
    young = table_module.marker_name(now - 60)  # a live writer's: must stay
    for j in range(K):
        ddb.update_item(
            TableName=ledger_table,
            Key={"pk": {"S": f"RUN#r1#C{j}"}, "sk": {"S": "COUNT"}},
            UpdateExpression="SET #a = :one, #b = :one, #c = :one, #y = :one",
            ExpressionAttributeNames={"#a": old[0], "#b": old[1], "#c": old[2], "#y": young},
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    # WHEN a writer records two batches (the second update removes what the first saw)
    ledger.record_outcomes("r1", K, [outcome(0)])
    ledger.record_outcomes("r1", K, [outcome(1)])
    # THEN the counter it used has lost the old markers, kept the young one, and counts 2
    markers = counter_markers(ddb, ledger_table)
    cleaned = [m for m in markers.values() if not set(old) & set(m)]
    assert len(cleaned) == 1 and young in cleaned[0]
    assert ledger.progress("r1").succeeded == 2


def test_a_crowded_counter_gets_its_marker_removed_at_once(ddb: Any, ledger_table: str) -> None:
    # GIVEN counters already near a write unit's 1 KB (many writers' markers on them)
    import microprocess.ledger.counters as table_module

    client = _UpdateLog(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(1))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [30])
    now = table_module.time.time()
    crowd = [table_module.marker_name(now) for _ in range(40)]
    for j in range(K):
        ddb.update_item(
            TableName=ledger_table,
            Key={"pk": {"S": f"RUN#r1#C{j}"}, "sk": {"S": "COUNT"}},
            UpdateExpression="SET " + ", ".join(f"#m{i} = :one" for i in range(len(crowd))),
            ExpressionAttributeNames={f"#m{i}": m for i, m in enumerate(crowd)},
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    # WHEN a batch is counted THEN its marker is removed by a second update, not left behind
    ledger.record_outcomes("r1", K, [outcome(0)])
    counter_writes = [u for u in client.updates if u["Key"]["sk"]["S"] == "COUNT"]
    assert [u["UpdateExpression"].split()[0] for u in counter_writes] == ["SET", "REMOVE"]
    assert all(set(m) == set(crowd) for m in counter_markers(ddb, ledger_table).values())
    assert ledger.progress("r1").succeeded == 1


def test_a_failed_marker_removal_is_said_and_kept_and_the_batch_still_counts(
    ddb: Any, ledger_table: str, caplog: pytest.LogCaptureFixture
) -> None:
    from botocore.exceptions import ClientError

    from microprocess.ledger.counters import HOME_BATCHES

    class RemovalFails(_UpdateLog):
        fail = True

        def update_item(self, **kw: Any) -> Any:
            if kw["UpdateExpression"].startswith("REMOVE") and self.fail:
                self.updates.append(kw)
                raise ClientError({"Error": {"Code": "InternalServerError", "Message": "boom"}}, "UpdateItem")
            return super().update_item(**kw)

    client = RemovalFails(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(2))
    ledger.create_run("r1", JOB)
    n = HOME_BATCHES + 2
    split_more = HOME_BATCHES
    split(ledger, "r1", [n + split_more])
    # WHEN the process moves to another counter and the removal on the old one fails
    for b in range(n):
        ledger.record_outcomes("r1", K, [outcome(b)])
    # THEN every batch is counted, the failure is logged, and the marker is still owed
    assert ledger.progress("r1").succeeded == n
    assert any("not removed yet" in r.getMessage() for r in caplog.records)
    owed = [names for (run, _), names in ledger._markers.items() if run == "r1"]
    assert sum(len(names) for names in owed) == 2  # the old counter's and the new one's
    # AND once DynamoDB answers again, the next move removes the old counter's marker
    client.fail = False
    for b in range(split_more):
        ledger.record_outcomes("r1", K, [outcome(n + b)])
    assert sum(len(m) for m in counter_markers(ddb, ledger_table).values()) == 1  # the last batch's only
    assert ledger.progress("r1").succeeded == n + split_more


def test_a_writer_leaves_a_counter_without_room_instead_of_trying_it_again(ddb: Any, ledger_table: str) -> None:
    # GIVEN a run whose split is done: every counter has a small room (its share of 48)
    from botocore.exceptions import ClientError

    class Refusals(_UpdateLog):
        refused = 0

        def update_item(self, **kw: Any) -> Any:
            try:
                return super().update_item(**kw)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
                    self.refused += 1
                raise

    client = Refusals(ddb)
    ledger = Ledger(ledger_table, client=client, rng=random.Random(4))
    ledger.create_run("r1", JOB)
    split(ledger, "r1", [48])
    ledger.finish_split("r1")
    # WHEN one writer records the 48 tasks one by one
    claims = [ledger.record_outcomes("r1", K, [outcome(i)]).claimed_reduce for i in range(48)]
    # THEN the last one claims, and the writer was refused once at most: its first update tries
    # the form without targets (the split was still running when it last looked). Each update's
    # answer tells it the room left, so it leaves a counter before a batch would be refused there
    # (a refused update is billed a write unit)
    assert claims[-1] is True and not any(claims[:-1])
    assert client.refused <= 1, client.refused
    assert ledger.progress("r1").succeeded == 48


def test_writers_sharing_counters_are_each_refused_by_a_counter_once_at_most(ddb: Any, ledger_table: str) -> None:
    # GIVEN a finished split of 400 tasks and three writers (three processes) recording batches
    # of 5 in turn: one writer fills a counter the others still think has room
    from botocore.exceptions import ClientError

    class Refusals(_UpdateLog):
        def __init__(self, inner: Any) -> None:
            super().__init__(inner)
            self.refused: list[str] = []

        def update_item(self, **kw: Any) -> Any:
            try:
                return super().update_item(**kw)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "ConditionalCheckFailedException" and "room >=" in kw.get(
                    "ConditionExpression", ""
                ):
                    self.refused.append(kw["Key"]["pk"]["S"])
                raise

    clients = [Refusals(ddb) for _ in range(3)]
    writers = [Ledger(ledger_table, client=c, rng=random.Random(10 + i)) for i, c in enumerate(clients)]
    writers[0].create_run("r1", JOB)
    split(writers[0], "r1", [400])
    writers[0].finish_split("r1")
    for b in range(80):
        writers[b % 3].record_outcomes("r1", K, [outcome(b * 5 + i) for i in range(5)])
    # THEN every task is counted once and the reduce is claimable, and no writer was refused
    # twice by the same counter (it remembers the counters it saw short for the run)
    assert writers[0].progress("r1").succeeded == 400
    for c in clients:
        assert len(c.refused) == len(set(c.refused)), c.refused
