"""Load shedding: a service's "not now" recorded once for every job (`microprocess.pipeline.shedding`)."""

from __future__ import annotations

from typing import Any

from microprocess.control.share import SERVICE_PK_PREFIX as SHARE_PREFIX
from microprocess.declarations import ServiceDeclaration
from microprocess.pipeline.push import PushResult
from microprocess.pipeline.shedding import (
    SERVICE_PK_PREFIX,
    ServiceWaits,
    ShedGate,
    describe_wait,
    shed_seconds,
)

SERVICE = ServiceDeclaration(name="scores", local_app="m:app")


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_prefix_is_the_controllers() -> None:
    assert SERVICE_PK_PREFIX == SHARE_PREFIX


def test_a_long_retry_after_sheds_a_short_one_only_slows_the_task() -> None:
    assert shed_seconds(SERVICE, PushResult(503, retry_after_s=120.0)) == 120.0
    assert shed_seconds(SERVICE, PushResult(429, retry_after_s=60.0)) == 60.0
    # a shorter one (the SDK's RetryLater(30)) delays that one task only
    assert shed_seconds(SERVICE, PushResult(503, retry_after_s=30.0)) is None
    assert shed_seconds(SERVICE, PushResult(500, retry_after_s=120.0)) is None
    assert shed_seconds(SERVICE, PushResult(200)) is None
    # a declared header sheds whatever the status
    assert shed_seconds(SERVICE, PushResult(200, shed_after_s=60.0)) == 60.0
    late = SERVICE.model_copy(update={"shed_after_s": 300})
    assert shed_seconds(late, PushResult(503, retry_after_s=120.0)) is None


def test_a_wait_is_recorded_once_for_every_forwarder_and_ends_at_its_time(ddb: Any, ledger_table: str) -> None:
    clock = Clock()
    one = ServiceWaits(ddb, ledger_table, clock=clock)
    other = ServiceWaits(ddb, ledger_table, clock=clock, ttl_s=0)  # another forwarder instance
    assert other.until("scores") is None
    until = one.ask_to_wait("scores", 120, "HTTP 503 asking to wait 120 s")
    assert other.until("scores") == until == clock.t + 120
    # an earlier ask does not shorten it; applied twice, the same item
    assert one.ask_to_wait("scores", 10, "short") == until
    assert one.ask_to_wait("scores", 120, "again") == until
    assert "120 s" in one.why("scores")
    assert other.until("reminders") is None  # per service
    clock.t += 121
    assert other.until("scores") is None
    assert describe_wait(until).startswith("asked to wait until ")


def test_the_cache_reads_a_service_once_per_ttl(ddb: Any, ledger_table: str) -> None:
    clock = Clock()
    calls: list[str] = []

    class Counting:
        def get_item(self, **kw: Any) -> Any:
            calls.append("get")
            return ddb.get_item(**kw)

    waits = ServiceWaits(Counting(), ledger_table, clock=clock, ttl_s=2.0)
    for _ in range(10):
        waits.until("scores")
    assert calls == ["get"]
    clock.t += 2.5
    waits.until("scores")
    assert calls == ["get", "get"]


def test_the_gate_records_a_shed_answer_and_reports_the_seconds_left(ddb: Any, ledger_table: str) -> None:
    clock = Clock()
    gate = ShedGate(ServiceWaits(ddb, ledger_table, clock=clock, ttl_s=0), _Reg())
    assert gate.wait_s("scores") is None
    assert gate.observe("scores", PushResult(503, retry_after_s=120.0)) == 120.0
    clock.t += 20
    assert gate.wait_s("scores") == 100.0
    assert gate.observe("scores", PushResult(429, retry_after_s=1.0)) is None
    item = ddb.get_item(TableName=ledger_table, Key=ServiceWaits.key("scores"))["Item"]
    assert item["pk"]["S"] == f"{SERVICE_PK_PREFIX}scores"


class _Reg:
    def __contains__(self, name: object) -> bool:
        return name == "scores"

    def get(self, name: str) -> ServiceDeclaration:
        return SERVICE


def test_a_failed_read_or_write_of_the_mark_never_fails_the_batch() -> None:
    from botocore.exceptions import EndpointConnectionError

    class Down:
        def get_item(self, **_: Any) -> Any:
            raise EndpointConnectionError(endpoint_url="https://dynamodb")

        def update_item(self, **_: Any) -> Any:
            raise EndpointConnectionError(endpoint_url="https://dynamodb")

    gate = ShedGate(ServiceWaits(Down(), "ledger"), _Reg())
    assert gate.wait_s("scores") is None  # pushed: the service answers for itself
    assert gate.observe("scores", PushResult(503, retry_after_s=120.0)) == 120.0  # this task still waits
