"""The bench harness's pure helpers: CPU time per Lambda function from worker readings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness import BenchError, _cpu, _function_name, cpu_by_function, wait_until_ended


def test_cpu_by_function_sums_each_functions_workers_between_two_readings() -> None:
    # GIVEN two forwarder workers and a splitter worker read before, and again after, plus a worker started in between
    before = {10: ("fwd", 1.0), 11: ("fwd", 2.0), 20: ("split", 0.5)}
    after = {10: ("fwd", 1.5), 11: ("fwd", 2.25), 20: ("split", 0.5), 12: ("fwd", 0.25)}

    # WHEN the CPU time per function is taken
    used = cpu_by_function(before, after)

    # THEN each function gets its workers' growth, the new worker counts from zero
    assert used == pytest.approx({"fwd": 0.5 + 0.25 + 0.25, "split": 0.0})


def test_cpu_by_function_counts_a_reused_pid_of_another_function_from_zero() -> None:
    # GIVEN a pid that belonged to the splitter before and to the forwarder after (a new worker)
    used = cpu_by_function({7: ("split", 3.0)}, {7: ("fwd", 0.4)})

    # THEN the forwarder is charged only its own 0.4 s, never a negative or the splitter's past
    assert used == pytest.approx({"fwd": 0.4})


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_function_name_and_cpu_are_read_from_a_live_process() -> None:
    # GIVEN a child process with a Lambda function name in its environment, burning a little CPU
    env = {**os.environ, "AWS_LAMBDA_FUNCTION_NAME": "bench-test-fn"}
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2: pass\ntime.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 20
        while _cpu(child.pid) < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)

        # WHEN its name and CPU time are read from /proc
        name, cpu = _function_name(child.pid), _cpu(child.pid)
    finally:
        child.kill()
        child.wait()

    # THEN the name is the environment's and the CPU time covers the busy loop
    assert name == "bench-test-fn"
    assert cpu >= 0.2
    assert _function_name(child.pid) == ""  # gone: unreadable, no name


def test_the_splitters_backpressure_line_is_read_as_waiting_time() -> None:
    import logging

    from bench.harness import _GATE_WAIT
    from microprocess.pipeline import splitter

    # The splitter's own log call (its format string, as written in `Splitter._room_for`)
    record = logging.LogRecord(
        "microprocess.pipeline.splitter",
        logging.INFO,
        splitter.__file__,
        0,
        "job %s: waited %.1f s for its queue to drain below %d (depth %d)",
        ("invoice-reminders", 12.34, 2000, 2150),
        None,
    )
    m = _GATE_WAIT.search(record.getMessage())
    assert m is not None and float(m["s"]) == 12.3
    import inspect

    assert "waited %.1f s for its queue to drain below" in inspect.getsource(splitter.Splitter._room_for)


def test_wait_until_ended_names_a_start_the_splitter_refused() -> None:
    # GIVEN a ledger in which the run's record never appears (the splitter refused its start)
    class NoRun:
        def get_run(self, run_id: str) -> None:
            return None

    # WHEN the bench waits for it with a short appearance limit
    with pytest.raises(BenchError, match="refused or failed the start"):
        wait_until_ended(NoRun(), "r", started=time.time(), timeout_s=60, echo=print, appear_within_s=0.3)
    # THEN it fails at once instead of waiting out the run's whole timeout


def test_every_p9_run_id_is_one_the_deployed_splitter_accepts() -> None:
    # GIVEN the ids P9 gives its runs (three jobs, then the shedding run of p9-light)
    from bench.fair_share_local import ITEMS, run_id
    from microprocess.declarations.run_keys import run_id_refusal

    ids = [(job, run_id(job, "p9", "20261207T000000")) for job in ITEMS] + [
        ("p9-light", run_id("p9-light", "p9-shed", "20261207T000000"))
    ]
    # THEN each starts with its job's name (a refused id left P9 waiting 30 minutes for nothing)
    assert [(job, rid) for job, rid in ids if run_id_refusal(job, rid)] == []
