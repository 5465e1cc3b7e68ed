"""A service's capacity split between its jobs by weight (`microprocess.control.share`) and the
per-service controller that applies it (`microprocess.control.service_controller`)."""

from __future__ import annotations

from typing import Any

import pytest

from microprocess.control.adaptive import Signals
from microprocess.control.scale import EventSourceCap
from microprocess.control.scheduled import ControllerState, tick
from microprocess.control.service_controller import ServiceShare, ServiceState, combined
from microprocess.control.share import JobDemand, allocate, declared_capacity, shared_services
from microprocess.declarations import ServiceDeclaration
from microprocess.declarations.models import JobDeclarationError
from tests.declared import CREDIT_SCORES


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def test_two_jobs_weighted_2_to_1_share_the_capacity_2_to_1_and_never_above_it() -> None:
    demands = [JobDemand("big", 2, 2, 50), JobDemand("small", 1, 2, 50)]
    split = allocate(24, demands)
    assert split.caps == {"big": 8, "small": 4}
    assert split.pushes(demands) == 24
    assert jain([split.caps["big"] * 2 / 2, split.caps["small"] * 2 / 1]) >= 0.95


def test_an_idle_job_gives_its_share_to_the_others_at_once_and_takes_it_back_when_it_has_work() -> None:
    busy = [JobDemand("a", 1, 1, 50), JobDemand("b", 1, 1, 50, active=False)]
    assert allocate(20, busy).caps == {"a": 20, "b": 0}
    both = [JobDemand("a", 1, 1, 50), JobDemand("b", 1, 1, 50)]
    assert allocate(20, both).caps == {"a": 10, "b": 10}


def test_a_job_capped_by_its_maximum_leaves_the_rest_to_the_others() -> None:
    demands = [JobDemand("a", 1, 1, 3), JobDemand("b", 1, 1, 50), JobDemand("c", 2, 1, 50)]
    split = allocate(30, demands)
    assert split.caps["a"] == 3
    assert split.caps["c"] == 18 and split.caps["b"] == 9
    assert split.pushes(demands) == 30


@pytest.mark.parametrize("capacity", [7, 13, 29, 41, 100])
def test_whole_batches_never_exceed_the_capacity(capacity: int) -> None:
    demands = [JobDemand("a", 3, 10, 50), JobDemand("b", 1, 4, 50), JobDemand("c", 1.5, 1, 50)]
    split = allocate(capacity, demands)
    if split.below_floor:
        assert capacity < 2 * (10 + 4 + 1)
    else:
        assert split.pushes(demands) <= capacity
        assert all(cap >= 2 for cap in split.caps.values())


def test_a_capacity_below_the_event_sources_floor_is_reported() -> None:
    split = allocate(10, [JobDemand("a", 1, 10, 50), JobDemand("b", 1, 10, 50)])
    assert split.below_floor and split.caps == {"a": 2, "b": 2}


def test_pushes_per_second_become_pushes_at_once_by_littles_law() -> None:
    service = ServiceDeclaration(name="svc", local_app="m:app", capacity={"pushes_per_second": 200})
    assert declared_capacity(service, 500.0) == 100
    assert declared_capacity(service, None) == 10  # 50 ms assumed until measured
    both = ServiceDeclaration(
        name="svc", local_app="m:app", capacity={"pushes_per_second": 200, "concurrent_pushes": 40}
    )
    assert declared_capacity(both, 500.0) == 40


def test_a_capacity_needs_a_bound_and_a_job_a_positive_weight() -> None:
    with pytest.raises(ValueError, match="concurrent_pushes and/or pushes_per_second"):
        ServiceDeclaration(name="svc", local_app="m:app", capacity={})
    with pytest.raises((ValueError, JobDeclarationError)):
        CREDIT_SCORES.model_validate({**CREDIT_SCORES.model_dump(), "weight": 0})


def test_shared_services_are_those_with_a_capacity_or_two_adaptive_jobs() -> None:
    one = CREDIT_SCORES.model_copy(update={"name": "one-job", "adaptive": True})
    two = CREDIT_SCORES.model_copy(update={"name": "two-job", "adaptive": True})
    plain = ServiceDeclaration(name=CREDIT_SCORES.service, local_app="m:app")
    assert shared_services([one], [plain]) == {}
    assert list(shared_services([one, two], [plain])) == [CREDIT_SCORES.service]
    capped = plain.model_copy(update={"capacity": {"concurrent_pushes": 8}})
    capped = ServiceDeclaration.model_validate({**plain.model_dump(), "capacity": {"concurrent_pushes": 8}})
    assert list(shared_services([CREDIT_SCORES], [capped])) == [CREDIT_SCORES.service]


# ----------------------------------------------------------------------------- the controller


class FakeAws:
    """Queues with message counts and mappings with caps, as the controller sees them."""

    def __init__(self, depth: dict[str, int]) -> None:
        self.depth = depth
        self.mappings = {job: {"UUID": f"u-{job}", "cap": 2, "State": "Enabled"} for job in depth}
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.in_flight: dict[str, int] = {}  # messages received, not yet deleted
        self.updates: list[tuple[str, dict[str, Any]]] = []

    # sqs
    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        return {
            "Attributes": {
                "ApproximateNumberOfMessages": str(self.depth[QueueUrl]),
                "ApproximateNumberOfMessagesNotVisible": str(self.in_flight.get(QueueUrl, 0)),
            }
        }

    # lambda
    def update_event_source_mapping(self, UUID: str, **changes: Any) -> None:
        job = UUID.removeprefix("u-")
        self.updates.append((job, changes))
        if "ScalingConfig" in changes:
            if changes["ScalingConfig"]["MaximumConcurrency"] < 2:  # as AWS (and the emulator) refuse it
                raise ValueError("Invalid value for parameter ScalingConfig.MaximumConcurrency: valid min value: 2")
            self.mappings[job]["cap"] = changes["ScalingConfig"]["MaximumConcurrency"]
        if "Enabled" in changes:
            self.mappings[job]["State"] = "Enabled" if changes["Enabled"] else "Disabled"

    # dynamodb
    def get_item(self, TableName: str, Key: dict[str, Any], **_: Any) -> dict[str, Any]:
        item = self.items.get((Key["pk"]["S"], Key["sk"]["S"]))
        return {"Item": item} if item else {}

    def put_item(self, TableName: str, Item: dict[str, Any]) -> None:
        self.items[(Item["pk"]["S"], Item["sk"]["S"])] = Item

    def query(self, TableName: str, ExpressionAttributeValues: dict[str, Any], **_: Any) -> dict[str, Any]:
        pk, prefix = ExpressionAttributeValues[":pk"]["S"], ExpressionAttributeValues[":high"]["S"]
        return {"Items": [i for (p, s), i in self.items.items() if p == pk and s.startswith(prefix)]}


class FakeScaler:
    def __init__(self, aws: FakeAws) -> None:
        self.sqs = self.lambda_client = aws
        self.aws = aws
        self.job_queue_urls = {job: job for job in aws.depth}

    def cap(self, job: Any) -> EventSourceCap:
        m = self.aws.mappings[job.name]
        return EventSourceCap(job.name, m["UUID"], "arn", "fn", m["cap"], m["State"], job.max_concurrency)


def _share(aws: FakeAws, jobs: list[Any], capacity: int, signals: Signals | None = None) -> ServiceShare:
    service = ServiceDeclaration(name="scores", local_app="m:app", capacity={"concurrent_pushes": capacity})
    return ServiceShare(
        service=service,
        jobs=jobs,
        scaler=FakeScaler(aws),  # type: ignore[arg-type]
        signals=lambda _job: signals or Signals(pushes=0),
        state=ServiceState(aws, "ledger"),
        clock=lambda: 1000.0,
    )


def _job(name: str, weight: float = 1.0, **more: Any) -> Any:
    return CREDIT_SCORES.model_copy(
        update={"name": name, "weight": weight, "batch_size": 2, "service": "scores", **more}
    )


def test_the_controller_sets_each_jobs_cap_to_its_weighted_share_and_disables_an_idle_job() -> None:
    aws = FakeAws({"big": 500, "small": 500, "short": 0})
    jobs = [_job("big", 2), _job("small", 1), _job("short", 1)]
    load = _share(aws, jobs, 24).tick()
    assert {j: m["cap"] for j, m in aws.mappings.items() if m["State"] == "Enabled"} == {"big": 8, "small": 4}
    assert aws.mappings["short"]["State"] == "Disabled"
    assert load.allowed_pushes == 24
    # WHEN the short job gets work, the next tick enables it and splits 2:1:1
    aws.depth["short"] = 40
    _share(aws, jobs, 24).tick()
    assert {j: (m["cap"], m["State"]) for j, m in aws.mappings.items()} == {
        "big": (6, "Enabled"),
        "small": (3, "Enabled"),
        "short": (3, "Enabled"),
    }
    # AND the load is read back for status and the console
    saved = ServiceState(aws, "ledger").service_load("scores")
    assert saved is not None and saved.capacity == 24 and saved.caps["short"] == 3
    assert "share 50%" in saved.describe()


def test_a_high_priority_run_takes_its_declared_larger_share_until_its_job_drains() -> None:
    aws = FakeAws({"a": 100, "b": 100})
    jobs = [_job("a", 1, priority_weight=3), _job("b", 1)]
    ServiceState(aws, "ledger").mark_high("scores", "a", "run-1")
    _share(aws, jobs, 16).tick()
    assert (aws.mappings["a"]["cap"], aws.mappings["b"]["cap"]) == (6, 2)
    aws.depth["a"] = 0  # drained: the mark ends
    _share(aws, jobs, 16).tick()
    assert ServiceState(aws, "ledger").high_marks("scores") == []


def test_the_learned_capacity_is_one_per_service_and_survives_across_ticks() -> None:
    aws = FakeAws({"a": 100, "b": 100})
    jobs = [_job("a", adaptive=True), _job("b", adaptive=True)]
    throttled = Signals(pushes=1000, throttled=500, p90_latency_ms=100.0, interval_s=60.0)
    first = _share(aws, jobs, 40, throttled).tick()
    assert first.learned is not None and first.learned < 40
    # each job's signals are combined: the service took half of 2,000 pushes
    assert combined([throttled, throttled]).pushes == 2000
    again = _share(aws, jobs, 40, Signals(pushes=0)).tick()
    assert again.learned == first.learned  # idle: starts where the learned capacity is, remembered
    assert again.caps == {"a": 0, "b": 0} or sum(again.caps.values()) * 2 <= 40


def test_the_service_s_learned_capacity_is_held_while_it_sheds_load_and_learned_again_after() -> None:
    # GIVEN two adaptive jobs whose service's controller learned a capacity
    aws = FakeAws({"a": 100, "b": 100})
    jobs = [_job("a", adaptive=True), _job("b", adaptive=True)]
    clock = [1000.0]

    def share(signals: Signals) -> ServiceShare:
        service = ServiceDeclaration(name="scores", local_app="m:app", capacity={"concurrent_pushes": 40})
        return ServiceShare(
            service=service,
            jobs=jobs,
            scaler=FakeScaler(aws),  # type: ignore[arg-type]
            signals=lambda _job: signals,
            state=ServiceState(aws, "ledger"),
            clock=lambda: clock[0],
        )

    healthy = Signals(pushes=600, p90_latency_ms=100.0, interval_s=60.0)
    learned = share(healthy).tick().learned
    assert learned is not None
    # WHEN the service sheds load: the batches in flight answered 503 Retry-After: 120, and the wait is marked
    aws.put_item(
        TableName="ledger",
        Item={"pk": {"S": "SVC#scores"}, "sk": {"S": "SHED"}, "until": {"N": str(clock[0] + 120)}},
    )
    start = share(Signals(pushes=600, shed=60, p90_latency_ms=100.0, interval_s=60.0)).tick()
    # THEN the learned capacity is held, not cut
    assert start.learned == learned and "shed" in start.reason
    # AND during the wait (no push: not idleness) it is held too
    clock[0] += 60
    quiet = share(Signals(pushes=0)).tick()
    assert quiet.learned == learned and "wait" in quiet.reason
    # WHEN the wait is over THEN the controller decides again (a healthy interval grows it)
    clock[0] += 120
    assert (share(healthy).tick().learned or 0) > learned


def test_caps_are_lowered_first_and_a_raise_waits_until_the_lowered_jobs_batches_have_finished() -> None:
    # GIVEN two jobs running at their 2:1 caps of a service at 24 pushes (8 + 4 batches of 2, all in flight)
    aws = FakeAws({"big": 500, "small": 500, "short": 0})
    aws.mappings["big"]["cap"], aws.mappings["small"]["cap"] = 8, 4
    aws.mappings["short"]["State"] = "Disabled"
    aws.in_flight = {"big": 16, "small": 8}
    jobs = [_job("big", 2), _job("small", 1), _job("short", 1)]
    clock = [1000.0]
    seen: list[dict[str, Any]] = []

    def sleep(s: float) -> None:  # the lowered jobs' batches finish one by one
        seen.append({j: (m["cap"], m["State"]) for j, m in aws.mappings.items()})
        clock[0] += s
        for job, keep in (("big", 12), ("small", 6)):
            aws.in_flight[job] = max(keep, aws.in_flight[job] - 2)

    def share() -> ServiceShare:
        service = ServiceDeclaration(name="scores", local_app="m:app", capacity={"concurrent_pushes": 24})
        return ServiceShare(
            service=service,
            jobs=jobs,
            scaler=FakeScaler(aws),  # type: ignore[arg-type]
            signals=lambda _job: Signals(pushes=0),
            state=ServiceState(aws, "ledger"),
            clock=lambda: clock[0],
            sleep=sleep,
        )

    pushes: list[int] = []  # the most pushes at once after each change: caps, or batches still running
    update = aws.update_event_source_mapping

    def checked(UUID: str, **changes: Any) -> None:
        update(UUID, **changes)
        pushes.append(
            sum(
                max(m["cap"] if m["State"] == "Enabled" else 0, -(-aws.in_flight.get(j, 0) // 2)) * 2
                for j, m in aws.mappings.items()
            )
        )

    aws.update_event_source_mapping = checked  # type: ignore[method-assign]
    # WHEN the short job gets work
    aws.depth["short"] = 40
    share().tick()
    # THEN the others were lowered (6:3) before the short job was enabled, which was raised in whole
    # batches as their batches above the new caps ended (enabled at once, it would have had 24 + 6
    # pushes to a service at 24): never above the capacity
    assert seen and seen[0] == {"big": (6, "Enabled"), "small": (3, "Enabled"), "short": (2, "Disabled")}
    assert [u for u in aws.updates if u[0] == "short"] == [
        ("short", {"ScalingConfig": {"MaximumConcurrency": 2}, "Enabled": True}),
        ("short", {"ScalingConfig": {"MaximumConcurrency": 3}}),
    ]
    assert max(pushes) <= 24
    assert aws.in_flight == {"big": 12, "small": 6}
    # AND a raise with nothing running above the new caps is applied at once
    aws.updates.clear()
    aws.depth["short"], seen[:] = 0, []
    share().tick()
    assert not seen and {j: m["cap"] for j, m in aws.mappings.items() if m["State"] == "Enabled"} == {
        "big": 8,
        "small": 4,
    }


def test_a_raise_waits_at_most_room_wait_s_for_the_lowered_batches() -> None:
    aws = FakeAws({"big": 500, "short": 40})
    aws.mappings["big"]["cap"] = 12
    aws.mappings["short"]["State"] = "Disabled"
    aws.in_flight = {"big": 24}  # messages backing off stay in flight: they never drain here
    clock = [1000.0]
    service = ServiceDeclaration(name="scores", local_app="m:app", capacity={"concurrent_pushes": 24})
    share = ServiceShare(
        service=service,
        jobs=[_job("big"), _job("short")],
        scaler=FakeScaler(aws),  # type: ignore[arg-type]
        signals=lambda _job: Signals(pushes=0),
        state=ServiceState(aws, "ledger"),
        clock=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
        room_wait_s=5.0,
    )
    share.tick()
    assert 1005.0 <= clock[0] <= 1006.0  # waited its bound, then raised anyway (the short job is not starved)
    assert aws.mappings["short"] == {"UUID": "u-short", "cap": 6, "State": "Enabled"}


def test_a_draining_job_s_unused_share_goes_to_the_others_at_once() -> None:
    # GIVEN a job weighted 2 whose queue has nothing left to receive, 3 batches (6 messages) in flight
    aws = FakeAws({"big": 0, "small": 500})
    aws.mappings["big"]["cap"], aws.mappings["small"]["cap"] = 8, 4
    aws.in_flight = {"big": 6}
    jobs = [_job("big", 2), _job("small", 1)]
    load = _share(aws, jobs, 24).tick()
    # THEN it keeps the batches it runs and the other job takes the rest of the capacity, at once
    assert load.caps == {"big": 3, "small": 9} and load.allowed_pushes == 24
    assert {j: m["cap"] for j, m in aws.mappings.items()} == {"big": 3, "small": 9}
    # AND a job with messages still to receive keeps its weighted share
    aws.depth["big"] = 40
    assert _share(aws, jobs, 24).tick().caps == {"big": 8, "small": 4}


def test_an_idle_job_whose_mapping_is_disabled_is_left_alone() -> None:
    # the deployed mappings carry a cap (8 on a laptop) while disabled; an idle job's is not touched
    aws = FakeAws({"a": 0, "b": 0})
    for m in aws.mappings.values():
        m["cap"], m["State"] = 8, "Disabled"
    load = _share(aws, [_job("a"), _job("b")], 24).tick()
    assert load.caps == {"a": 0, "b": 0} and aws.updates == []


def test_the_services_of_one_tick_share_its_time_for_raises_so_the_last_is_decided_in_time() -> None:
    # GIVEN three shared services, each with a lowered job whose batches never drain (backing off) and
    # a job waiting to be enabled: each service's raise waits for room that never comes
    named = ("svc-a", "svc-b", "svc-c")
    aws = FakeAws({f"{s}-{k}": (500 if k == "big" else 40) for s in named for k in ("big", "short")})
    for s in named:
        aws.mappings[f"{s}-big"]["cap"] = 12
        aws.mappings[f"{s}-short"]["State"] = "Disabled"
        aws.in_flight[f"{s}-big"] = 24
    services = [ServiceDeclaration(name=s, local_app="m:app", capacity={"concurrent_pushes": 24}) for s in named]
    jobs = [_job(f"{s}-{k}", service=s) for s in named for k in ("big", "short")]
    clock = [1000.0]
    # WHEN one scheduled tick decides them all with a budget of 30 s for the waits
    decisions = tick(
        jobs=jobs,
        scaler=FakeScaler(aws),  # type: ignore[arg-type]
        signals=lambda _job: Signals(pushes=0),
        state=ControllerState(aws, "ledger"),
        services=services,
        clock=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
        room_budget_s=30.0,
    )
    # THEN the three waited 30 s together, not 15 s each (45 s: past what the function has), and every
    # service was decided, its short job enabled
    assert set(decisions) == {"service:svc-a", "service:svc-b", "service:svc-c"}
    assert 1028.0 <= clock[0] <= 1032.0
    assert all(aws.mappings[f"{s}-short"]["State"] == "Enabled" for s in named)
