"""The local stack's process handling: only what it started is stopped, children included."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from microprocess.local.processes import (
    ProcessError,
    descendants,
    free_port,
    is_running,
    port_open,
    spawn,
    stop,
    wait_http_ok,
)
from microprocess.local.stack import LocalStack, StackAlreadyRunning, UpOptions, stop_recorded
from microprocess.local.state import LocalState, NoLocalStack, read_live_state, read_state, write_state
from microprocess.local.workspace import Workspace

# A parent that starts a child (like the emulator and its Lambda workers), then sleeps.
PARENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
time.sleep(120)
"""
# A process that ignores SIGTERM (a hung worker), so only SIGKILL ends it. Once its handler is in
# place it prints READY (built at run time: the log's first line already holds the command itself).
READY = "SIGTERM ignored"
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('SIGTERM', 'ignored', flush=True); "
    "time.sleep(120)"
)


def _wait_for_children(pid: int, n: int) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = descendants(pid)
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not start {n} children")


def test_stop_ends_the_process_and_its_children(tmp_path: Path) -> None:
    handle = spawn("parent", [sys.executable, "-c", PARENT], env={}, cwd=tmp_path, log=tmp_path / "parent.log")
    (child,) = _wait_for_children(handle.pid, 1)
    stop(handle.pid, handle.start_ticks)
    assert not is_running(handle.pid) and not is_running(child)


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    # GIVEN a process that has installed its SIGTERM handler (it says so in its log) ...
    log = tmp_path / "s.log"
    handle = spawn("stubborn", [sys.executable, "-c", STUBBORN], env={}, cwd=tmp_path, log=log)
    deadline = time.monotonic() + 20
    while READY not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert READY in log.read_text(), log.read_text()
    try:
        # ... and so survives a SIGTERM
        os.kill(handle.pid, signal.SIGTERM)
        time.sleep(0.3)
        assert is_running(handle.pid, handle.start_ticks)
        # WHEN it is stopped THEN the SIGKILL after the grace period ends it
        stop(handle.pid, handle.start_ticks, grace_s=0.5)
        assert not is_running(handle.pid)
    finally:  # never leave it behind, whatever failed
        if is_running(handle.pid, handle.start_ticks):
            os.kill(handle.pid, signal.SIGKILL)


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    # GIVEN a live process recorded with another start time (its id was reused)
    handle = spawn(
        "other", [sys.executable, "-c", "import time; time.sleep(60)"], env={}, cwd=tmp_path, log=tmp_path / "o.log"
    )
    try:
        assert handle.start_ticks is not None
        assert not is_running(handle.pid, handle.start_ticks + 1)
        stop(handle.pid, handle.start_ticks + 1)
        # THEN it is left alone
        assert is_running(handle.pid, handle.start_ticks)
    finally:
        stop(handle.pid, handle.start_ticks)


def test_local_down_stops_exactly_the_recorded_processes(tmp_path: Path) -> None:
    ws = Workspace(root=tmp_path, workdir=tmp_path / "work")
    ws.create()
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    recorded = spawn("ministack", argv, env={}, cwd=tmp_path, log=ws.log("ministack"))
    bystander = spawn("bystander", argv, env={}, cwd=tmp_path, log=tmp_path / "b.log")
    try:
        write_state(
            ws.state_file,
            LocalState(
                endpoint_url="http://127.0.0.1:1",
                pids={"ministack": recorded.pid},
                process_start_ticks={"ministack": recorded.start_ticks},
            ),
        )
        assert read_live_state(ws.state_file).running() == {"ministack": recorded.pid}
        assert stop_recorded(ws, echo=lambda line: None) == ["ministack"]
        assert not is_running(recorded.pid) and is_running(bystander.pid)
        assert not ws.state_file.exists()
        with pytest.raises(NoLocalStack, match="microprocess local up"):
            read_state(ws.state_file)
    finally:
        stop(bystander.pid, bystander.start_ticks)


def test_wait_http_ok_fails_fast_with_the_log_when_the_process_dies(tmp_path: Path) -> None:
    handle = spawn(
        "crasher",
        [sys.executable, "-c", "print('port taken'); raise SystemExit(3)"],
        env={},
        cwd=tmp_path,
        log=tmp_path / "c.log",
    )
    with pytest.raises(ProcessError, match=r"(?s)exited before it was ready.*port taken"):
        wait_http_ok(f"http://127.0.0.1:{free_port()}/", handle, timeout_s=20)


def test_free_port_is_free() -> None:
    assert not port_open(free_port())


def test_up_refuses_a_running_stack_and_leaves_it_alone(tmp_path: Path) -> None:
    # GIVEN a running stack recorded in the work folder
    ws = Workspace(root=tmp_path, workdir=tmp_path / "work")
    ws.create()
    running = spawn(
        "ministack",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={},
        cwd=tmp_path,
        log=ws.log("ministack"),
    )
    try:
        write_state(
            ws.state_file,
            LocalState(
                endpoint_url="http://127.0.0.1:1",
                pids={"ministack": running.pid},
                process_start_ticks={"ministack": running.start_ticks},
            ),
        )
        # WHEN another stack is started there (as `demo` does), then cleaned up
        second = LocalStack(ws, echo=lambda line: None)
        with pytest.raises(StackAlreadyRunning, match="microprocess local down"):
            second.up(UpOptions(items=1))
        second.down()
        # THEN the running stack, its local.json and its log are untouched
        assert is_running(running.pid, running.start_ticks)
        assert read_state(ws.state_file).pids == {"ministack": running.pid}
        assert ws.log("ministack").exists()
    finally:
        stop(running.pid, running.start_ticks)


def test_the_work_folder_and_what_the_stack_writes_are_for_its_user_alone(tmp_path: Path) -> None:
    # GIVEN a work folder left world-readable by an older version
    old = tmp_path / "work"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    ws = Workspace(root=tmp_path, workdir=old)
    # WHEN the stack creates its folders
    ws.create()
    # THEN the work folder is 0700 (no other local user can reach outputs, logs or cdk.out)
    assert old.stat().st_mode & 0o777 == 0o700
    # AND a process the stack spawns logs to a 0600 file and creates files no one else can read
    made = tmp_path / "work" / "made-by-child.json"
    code = f"open({str(made)!r}, 'w').write('{{}}')"
    handle = spawn("writer", [sys.executable, "-c", code], env={}, cwd=tmp_path, log=ws.log("writer"))
    deadline = time.monotonic() + 10
    while not made.exists() or is_running(handle.pid, handle.start_ticks):
        assert time.monotonic() < deadline, "the child did not write its file"
        time.sleep(0.05)
    assert ws.log("writer").stat().st_mode & 0o777 == 0o600
    assert made.stat().st_mode & 0o077 == 0, oct(made.stat().st_mode)
