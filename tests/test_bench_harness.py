"""The bench harness's pure helpers: CPU time per Lambda function from worker readings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.harness import _cpu, _function_name, cpu_by_function


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
