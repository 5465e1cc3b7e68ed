"""The local stack's fit to a laptop (`microprocess.local.tuning`): how many forwarder workers it warms."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from microprocess.declarations import ServiceDeclaration
from microprocess.local.tuning import forwarder_workers
from tests.declared import CREDIT_SCORES


def _declared(services: list[ServiceDeclaration], jobs: list[Any]) -> Any:
    return SimpleNamespace(services=services, jobs_of=lambda name: [j for j in jobs if j.service == name])


def _job(name: str, batch_size: int = 4, max_concurrency: int = 20) -> Any:
    return CREDIT_SCORES.model_copy(
        update={"name": name, "service": "scores", "batch_size": batch_size, "max_concurrency": max_concurrency}
    )


def test_a_shared_service_s_capacity_in_batches_is_warmed_beyond_the_deployed_cap() -> None:
    # P9: K = 48 pushes, batches of 4: the controller runs 12 batches at once against 8 deployed;
    # 3 jobs: one more batch each while the caps change
    service = ServiceDeclaration(name="scores", local_app="m:app", capacity={"concurrent_pushes": 48})
    jobs = [_job("heavy"), _job("light"), _job("short")]
    assert forwarder_workers(8, _declared([service], jobs)) == 12 + 3


def test_without_a_declared_capacity_the_deployed_cap_is_warmed() -> None:
    plain = ServiceDeclaration(name="scores", local_app="m:app")
    rate = ServiceDeclaration(name="scores", local_app="m:app", capacity={"pushes_per_second": 500})
    assert forwarder_workers(8, _declared([plain], [_job("a")])) == 8
    assert forwarder_workers(8, _declared([rate], [_job("a")])) == 8  # pushes at once unknown before a push


def test_the_jobs_maxima_and_four_times_the_deployed_cap_bound_the_workers() -> None:
    small = ServiceDeclaration(name="scores", local_app="m:app", capacity={"concurrent_pushes": 400})
    assert forwarder_workers(8, _declared([small], [_job("a", batch_size=1, max_concurrency=10)])) == 11
    assert forwarder_workers(8, _declared([small], [_job("a", batch_size=1, max_concurrency=500)])) == 32
    tiny = ServiceDeclaration(name="scores", local_app="m:app", capacity={"concurrent_pushes": 8})
    assert forwarder_workers(8, _declared([tiny], [_job("a")])) == 8  # 2 batches + 1: below the deployed cap


def test_the_reducer_is_warmed_as_many_as_its_event_source_runs_at_once() -> None:
    from microprocess.local.tuning import warm_reducers

    class Lambda:
        def __init__(self) -> None:
            self.invoked: list[str] = []

        def list_event_source_mappings(self, FunctionName: str) -> dict[str, Any]:
            return {"EventSourceMappings": [{"ScalingConfig": {"MaximumConcurrency": 8}}]}

        def invoke(self, FunctionName: str, **_: Any) -> dict[str, Any]:
            self.invoked.append(FunctionName)
            return {"Payload": SimpleNamespace(read=lambda: b"{}")}

    lam = Lambda()
    assert warm_reducers(lam, "reducer") == 8 and lam.invoked == ["reducer"] * 8
    assert warm_reducers(lam, None) == 0 and warm_reducers(lam, "reducer", warm=False) == 0
