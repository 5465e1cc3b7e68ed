"""A stateful model test of the ledger's invariants (ARCHITECTURE §3: 1, 2, 3, 5, 6).

Hypothesis interleaves split pages (sent before they are accounted), duplicate and
batched deliveries, deliveries whose every write is applied and then retried by the SDK
("applied, then error"), failures, crashes between writing a task and counting it,
crashed splitters re-accounting a page, repairs (some dying before their completion check),
and completion checks racing to the claim: every check of the model's ledger that reaches its
claim is paused there while a rival check reads the run (RUNNING still) and claims first.
After every step it checks: nothing counted twice, the reduce claimed at most
once and only when the split is done and every task is terminal, and (after a
repair, or with no crash pending) counts equal the task records.
"""

from __future__ import annotations

import random

import boto3
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from moto import mock_aws

from microprocess.chaos.faults import FaultConfig, FaultInjector
from microprocess.declarations import declare
from microprocess.ledger import (
    CRASH_AFTER_TASK_WRITE,
    CURSOR_DONE,
    Ledger,
    RunStatus,
    TaskOutcome,
    TaskState,
    ledger_table_definition,
)
from microprocess.pipeline.envelope import shard_of
from tests.declared import CREDIT_SCORES
from tests.interleave import PausedBeforeWrite

JOB = declare(**{**CREDIT_SCORES.model_dump(), "shard_count": 3, "counter_count": 4})
RUN = "run-1"


class Crash(Exception):
    pass


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.mock = mock_aws()
        self.mock.start()
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**ledger_table_definition("ledger"))
        # Every completion check of the model's ledger that reaches its claim (having read the run
        # RUNNING and complete) is paused there while a rival check (another forwarder finishing
        # a shard, the sweeper) reads the run, RUNNING still, and writes its claim first.
        rival = Ledger("ledger", client=client, max_workers=2)
        self.racing = PausedBeforeWrite(client, meanwhile=lambda: rival.check_completion(RUN), every=True)
        self.ledger = Ledger("ledger", client=self.racing, rng=random.Random(0), max_workers=2)
        self.crash_next = False

        def hook(point: str) -> None:
            if point == CRASH_AFTER_TASK_WRITE and self.crash_next:
                self.crash_next = False
                raise Crash(point)

        self.crashing = Ledger("ledger", client=client, crash_hook=hook, max_workers=2)
        # A forwarder whose every write is applied, then retried by the SDK (a 500 or a read
        # timeout on a request DynamoDB had carried out): "applied, then error".
        ambiguous_client = boto3.client("dynamodb", region_name="us-east-1")
        self.injector = FaultInjector(FaultConfig(applied_then_error=1.0))
        self.injector.install_ambiguous_writes(ambiguous_client)
        self.ambiguous = Ledger("ledger", client=ambiguous_client, rng=random.Random(1), max_workers=2)
        self.claims = 0
        self.check_pending = False  # a sweeper died between its recount and its completion check
        self.sent: list[str] = []  # task ids on the queue (sent before accounted)
        self.accounted = 0
        self.cursor = ""
        self.split_finished = False
        self.recorded: dict[str, TaskState] = {}
        self.uncounted = 0  # tasks whose counter update a crash or a fence swallowed

    @initialize(source=st.integers(min_value=0, max_value=24))
    def start(self, source: int) -> None:
        self.source = source
        self.ledger.create_run(RUN, JOB)

    def teardown(self) -> None:
        self.mock.stop()

    def _outcome(self, task_id: str, fail: bool) -> TaskOutcome:
        state = TaskState.FAILED if fail else TaskState.SUCCEEDED
        return TaskOutcome(task_id, shard_of(task_id, JOB.shard_count), state, attempts=1, error="x" if fail else None)

    # ---- splitter

    @precondition(lambda self: len(self.sent) < self.source)
    @rule(size=st.integers(min_value=1, max_value=7))
    def send_page(self, size: int) -> None:
        """The splitter sends a page (messages are on the queue; not yet accounted)."""
        start = len(self.sent)
        self.sent.extend(f"0-{i:09d}" for i in range(start, min(start + size, self.source)))

    @precondition(lambda self: len(self.sent) > self.accounted)
    @rule(replay=st.booleans())
    def account_page(self, replay: bool) -> None:
        """Account everything sent so far; with `replay` a resumed splitter accounts it twice."""
        n = len(self.sent) - self.accounted
        nxt = CURSOR_DONE if len(self.sent) == self.source else f"c{len(self.sent)}"
        assert self.ledger.account_page(RUN, segment="0", cursor_from=self.cursor, cursor_to=nxt, count=n)
        if replay:
            assert not self.ledger.account_page(RUN, segment="0", cursor_from=self.cursor, cursor_to=nxt, count=n)
        self.cursor = nxt
        self.accounted += n

    @precondition(lambda self: (self.accounted == self.source and self.cursor == CURSOR_DONE) or self.source == 0)
    @rule()
    def finish_split(self) -> None:
        if self.source == 0 and self.cursor != CURSOR_DONE:
            self.ledger.account_page(RUN, segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=0)
            self.cursor = CURSOR_DONE
        self.claims += int(self.ledger.finish_split(RUN))
        self.split_finished = True

    # ---- forwarders

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), fail=st.booleans())
    def deliver(self, data: st.DataObject, fail: bool) -> None:
        """A batch of 1..4 deliveries, possibly of tasks already recorded (duplicates)."""
        batch = data.draw(st.lists(st.sampled_from(self.sent), min_size=1, max_size=4))
        res = self.ledger.record_outcomes(RUN, JOB.counter_count, [self._outcome(t, fail) for t in batch])
        for t in res.newly_recorded:
            self.recorded[t] = TaskState.FAILED if fail else TaskState.SUCCEEDED
        if not res.counted:
            self.uncounted += len(res.newly_recorded)
        self.claims += int(res.claimed_reduce)

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), fail=st.booleans())
    def deliver_applied_then_error(self, data: st.DataObject, fail: bool) -> None:
        """A batch whose task puts and counter update are each applied, then retried by the SDK."""
        batch = data.draw(st.lists(st.sampled_from(self.sent), min_size=1, max_size=4))
        fired = sum(self.injector.fired.values())
        res = self.ambiguous.record_outcomes(RUN, JOB.counter_count, [self._outcome(t, fail) for t in batch])
        if res.newly_recorded:  # a write that failed its condition (a duplicate) is not ambiguous
            assert sum(self.injector.fired.values()) > fired, "the fault did not fire"
        for t in res.newly_recorded:
            assert t not in self.recorded, f"{t} recorded twice"
            self.recorded[t] = TaskState.FAILED if fail else TaskState.SUCCEEDED
        if not res.counted:
            self.uncounted += len(res.newly_recorded)
        self.claims += int(res.claimed_reduce)

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def deliver_and_crash(self, data: st.DataObject) -> None:
        """A forwarder dies between writing its task records and counting them."""
        batch = data.draw(st.lists(st.sampled_from(self.sent), min_size=1, max_size=3, unique=True))
        new = [t for t in batch if t not in self.recorded]
        self.crash_next = True
        try:
            self.crashing.record_outcomes(RUN, JOB.counter_count, [self._outcome(t, False) for t in batch])
        except Crash:
            for t in new:
                self.recorded[t] = TaskState.SUCCEEDED
            self.uncounted += len(new)

    @rule()
    def completion_check_twice(self) -> None:
        """Two more completion checks (each one that reaches its claim is raced by the rival's)."""
        self.claims += int(self.ledger.check_completion(RUN)) + int(self.ledger.check_completion(RUN))
        self.check_pending = False

    # ---- sweeper

    @rule(dies_before_check=st.booleans())
    def repair(self, dies_before_check: bool) -> None:
        """The sweeper recounts; with `dies_before_check` it dies before its completion check, so
        a run can be complete and unclaimed until the next check (what `completion_check_twice` races)."""
        s, f = self.ledger.repair_counters(RUN)
        assert s + f == len(self.recorded)
        self.uncounted = 0
        self.check_pending = dies_before_check
        if not dies_before_check:
            self.claims += int(self.ledger.check_completion(RUN))

    # ---- invariants

    @invariant()
    def counted_once(self) -> None:
        if not hasattr(self, "source"):
            return
        prog = self.ledger.progress(RUN)
        counted = prog.succeeded + prog.failed
        assert counted == len(self.recorded) - self.uncounted, (counted, len(self.recorded), self.uncounted)
        if self.uncounted == 0:
            assert prog.failed == sum(1 for s in self.recorded.values() if s is TaskState.FAILED)

    def _all_claims(self) -> int:
        """Claims by the model's callers and by the rival checks that raced them."""
        return self.claims + sum(1 for won in self.racing.outcomes if won is True)

    @invariant()
    def reduce_once_and_only_at_the_end(self) -> None:
        if not hasattr(self, "source"):
            return
        claims = self._all_claims()
        assert claims <= 1, f"the reduce was claimed {claims} times"
        status = self.ledger.require_run(RUN).status
        if claims == 1:
            assert status is RunStatus.REDUCING
            assert self.split_finished and self.accounted == self.source
            assert len(self.recorded) == self.source, "claimed while tasks were pending"
        else:
            assert status in (RunStatus.SPLITTING, RunStatus.RUNNING)

    @invariant()
    def finishes_when_everything_is_done(self) -> None:
        """Runs always finish: once split, all recorded and counted, the reduce has been claimed."""
        if not hasattr(self, "source"):
            return
        if self.split_finished and len(self.recorded) == self.source and self.uncounted == 0 and not self.check_pending:
            assert self._all_claims() == 1


TestLedgerStateful = LedgerMachine.TestCase
TestLedgerStateful.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
