"""Starting and stopping the local stack's processes, and only those.

Every process is started in its own session, so its process id is also its process
group id: stopping it signals the group, which reaches the children it started (the
emulator's Lambda workers). A process is identified by its id *and* its start time
(Linux `/proc/<pid>/stat`), so a recycled process id is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class ProcessError(RuntimeError):
    """A process that did not start, did not become ready, or did not stop."""


@dataclass(frozen=True)
class ProcessHandle:
    """A started process.

    Attributes:
        name: the role (`ministack`, `scores-live`, `scores-queue`); also its log's name.
        pid: process id, and process group id (it leads its own session).
        start_ticks: its start time in clock ticks since boot (None where `/proc` is missing).
        log: the file its stdout and stderr go to.
    """

    name: str
    pid: int
    start_ticks: int | None
    log: Path


def start_ticks(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None if unknown (no `/proc`, no process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2 (comm) may contain spaces and parentheses: split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 overall


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is our own child (so it does not linger as a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_running(pid: int, ticks: int | None = None) -> bool:
    """True if process `pid` exists, is not a zombie, and (when `ticks` is given) is the one that
    started at `ticks`."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _proc_state(pid) == "Z":
        return False
    return not (ticks is not None and start_ticks(pid) not in (None, ticks))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left in the group count as gone.
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[2]) == pgid and stat[0] != "Z":
            return True
    return False


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux; empty elsewhere)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(stat[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log: Path,
) -> ProcessHandle:
    """Start `argv` in its own session, its output appended to `log` (0600); what it creates is
    its user's alone (umask 077)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        os.chmod(log, 0o600)  # a log left by an older version keeps its mode otherwise
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=0o077,
        )
    return ProcessHandle(name=name, pid=proc.pid, start_ticks=start_ticks(proc.pid), log=log)


def stop(pid: int, ticks: int | None = None, *, grace_s: float = 8.0) -> None:
    """Stop the process `pid` (started by `spawn`) and everything in its group and below it.

    SIGTERM first, SIGKILL after `grace_s`. Raises `ProcessError` if anything is left.
    Does nothing if `pid` is gone or is another process now (recycled id).
    """
    if not is_running(pid, ticks):
        return
    leads_group = os.getpgid(pid) == pid
    below = descendants(pid)

    def signal_all(sig: signal.Signals) -> None:
        targets = [pid, *below]
        if leads_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        for p in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)

    def all_gone() -> bool:
        return (
            not is_running(pid, ticks)
            and not any(is_running(p) for p in below)
            and not (leads_group and _group_alive(pid))
        )

    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if all_gone():
            return
        time.sleep(0.05)
    signal_all(signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if all_gone():
            return
        time.sleep(0.05)
    left = [p for p in [pid, *below] if is_running(p)]
    raise ProcessError(f"process {pid} or its children {left} did not stop after SIGKILL")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts connections on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_http_ok(url: str, handle: ProcessHandle, *, timeout_s: float, context: ssl.SSLContext | None = None) -> None:
    """Poll `url` until it answers 200; fail early, with the log's tail, if the process exits.

    `context`: the TLS trust for an https `url` (the local CA)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not is_running(handle.pid, handle.start_ticks):
            raise ProcessError(
                f"{handle.name} exited before it was ready; its log ({handle.log}) ends with:\n{log_tail(handle.log)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise ProcessError(
        f"{handle.name} was not ready at {url} after {timeout_s:.0f} s ({last}); "
        f"see {handle.log}:\n{log_tail(handle.log)}"
    )


def wait_port_open(port: int, handle: ProcessHandle, *, timeout_s: float) -> None:
    """Wait until `handle` accepts connections on 127.0.0.1:`port` (uvicorn binds once its app has
    started); fail early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(handle.pid, handle.start_ticks):
            raise ProcessError(
                f"{handle.name} exited before it was ready; its log ({handle.log}) ends with:\n{log_tail(handle.log)}"
            )
        if port_open(port):
            return
        time.sleep(0.1)
    raise ProcessError(
        f"{handle.name} did not listen on port {port} after {timeout_s:.0f} s; "
        f"see {handle.log}:\n{log_tail(handle.log)}"
    )
