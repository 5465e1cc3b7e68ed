"""The functions' metrics: an invocation's counts go out as one EMF document per job and run."""

from __future__ import annotations

import json
import threading

import pytest

from microprocess.local.signals import emf_metrics
from microprocess.pipeline.metrics import InvocationMetrics


def test_an_invocations_counts_are_one_document_per_job_and_run() -> None:
    written: list[tuple[str, str | None, list[tuple[str, float]]]] = []
    metrics = InvocationMetrics(lambda job, run, values: written.append((job, run, values)))
    # GIVEN a batch's counts: pushes (no run), two runs of job a, one run of job b, and zeros
    metrics("ServicePushes", 10, "a")
    metrics("ServiceThrottled", 0, "a")
    metrics("TasksSucceeded", 6, "a", run_id="r1")
    metrics("TasksSucceeded", 4, "a", run_id="r2")
    metrics("TasksRetried", 1, "b", run_id="r3")
    metrics("TasksRetried", 1, "b", run_id="r3")
    # WHEN it is flushed, THEN one document per (job, run); the run-less counts join the job's
    # first one; zeros are left out; a count made twice keeps both values
    assert metrics.flush() == 3
    assert written == [
        ("a", "r1", [("ServicePushes", 10.0), ("TasksSucceeded", 6.0)]),
        ("a", "r2", [("TasksSucceeded", 4.0)]),
        ("b", "r3", [("TasksRetried", 1.0), ("TasksRetried", 1.0)]),
    ]
    # AND a second flush writes nothing new
    assert metrics.flush() == 0 and len(written) == 3


def test_counts_without_a_run_are_a_document_of_their_own() -> None:
    written: list[tuple[str, str | None, list[tuple[str, float]]]] = []
    metrics = InvocationMetrics(lambda job, run, values: written.append((job, run, values)))
    metrics("ServicePushes", 3, "a")
    assert metrics.flush() == 1 and written == [("a", None, [("ServicePushes", 3.0)])]


def test_counts_from_many_threads_are_all_kept() -> None:
    written: list[tuple[str, str | None, list[tuple[str, float]]]] = []
    metrics = InvocationMetrics(lambda job, run, values: written.append((job, run, values)))
    threads = [threading.Thread(target=lambda: [metrics("Pushes", 1, "a") for _ in range(500)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    metrics.flush()
    assert sum(v for _, _, values in written for _, v in values) == 4000


def test_the_document_is_emf_that_cloudwatch_and_the_local_readers_take(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Microprocess")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "microprocess")
    metrics = InvocationMetrics()
    metrics("ServicePushes", 10, "credit-scores")
    metrics("PushBatchMilliseconds", 12.5, "credit-scores")
    metrics("TasksSucceeded", 10, "credit-scores", run_id="r1")
    metrics.flush()
    [line] = capsys.readouterr().out.splitlines()
    found = emf_metrics(line)
    assert found is not None
    doc, values = found
    assert values == {"ServicePushes": [10.0], "PushBatchMilliseconds": [12.5], "TasksSucceeded": [10.0]}
    assert doc["job"] == "credit-scores" and doc["run_id"] == "r1" and doc["service"] == "microprocess"
    [directive] = json.loads(line)["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "Microprocess" and directive["Dimensions"] == [["job", "service"]]
