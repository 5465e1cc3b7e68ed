"""The live part of the bench: a local stack with a counting proxy and a no-op task endpoint.

`BenchStack` starts (and always stops) the processes of one measurement:

1. the embedded local stack (`microprocess.local.LocalStack`) in its own work folder,
   `.microprocess/bench`, seeded with as many companies as the bench has items;
2. the counting proxy (`bench.proxy`) in front of the emulator, one port per caller;
3. two instances of the bench's queue service (`bench.noop_service`: the real app with a
   no-op task endpoint): one calling the emulator directly, one through the proxy
   (caller `service`).

The pipeline runs twice. The *plain* run is the pipeline as it is (functions calling the
emulator directly): it gives the throughput, the latencies and the functions' durations.
The *counted* run points each function's `AWS_ENDPOINT_URL` at its own proxy port (a
function's own variable wins over the endpoint the emulator injects; ministack applies
`UpdateFunctionConfiguration` at once, with new workers) and gives the requests, the
units and the writes per key. The event source's own ReceiveMessage/DeleteMessage calls
happen inside the emulator: they are read from its log (one line per batch).
"""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import resource
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.figures import EventSourceUse, FunctionUse, Observed, parse_time
from microprocess.ledger import Ledger, RunStatus
from microprocess.local import LocalStack, LocalState, StackAlreadyRunning, UpOptions, Workspace, captured_emails
from microprocess.local.emulator import aws_env, log_group_of, log_messages
from microprocess.local.gateway import CONSUMED_CAPACITY_ENV
from microprocess.local.processes import ProcessHandle, descendants, spawn, stop, wait_http_ok
from microprocess.local.sender import ses_sender
from microprocess.local.services import ServiceProcess, processes_of, role_of, service_env, write_role_profile
from microprocess.local.tuning import forwarder_workers, warm_reducers, warm_workers
from microprocess.local.workspace import project_root
from microprocess.pipeline.queue import SEND_THREADS, QueueSender
from microprocess.pipeline.settings import RuntimeSettings
from tests.declared import CREDIT_SCORES

Echo = Callable[[str], None]


class Loop:
    """Runs `step` every `interval_s` seconds in a thread until stopped (first at once, or after
    one interval with `wait_first`); its errors are kept in `errors`, the loop goes on."""

    def __init__(self, step: Callable[[], None], interval_s: float, *, wait_first: bool = False) -> None:
        self.step, self.interval_s, self.wait_first = step, interval_s, wait_first
        self.errors: list[str] = []
        self.started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Loop:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        if self.wait_first and self._stop.wait(self.interval_s):
            return
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # reported with the outcome
                self.errors.append(repr(exc))
            self._stop.wait(self.interval_s)


def echo_stderr(line: str) -> None:
    """A standalone bench's progress: to stderr, so that stdout holds only the figures."""
    print(line, file=sys.stderr, flush=True)


def write_figures(out: Path, result: dict[str, Any], rows: list[tuple[str, str]]) -> None:
    """A standalone bench's ending: the result JSON to `out`, its table rows to stdout."""
    out.write_text(json.dumps(result, indent=2) + "\n")
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"written to {out}")


#: Roles of the stack's functions and the stack outputs that name them.
FUNCTION_OUTPUTS = {
    "splitter": "SplitterFunctionName",
    "forwarder": "ForwarderFunctionName",
    "reducer": "ReduceForwarderFunctionName",
    "dead_letter": "DeadLetterFunctionName",
    "sweeper": "SweeperFunctionName",
}
CALLERS = (*FUNCTION_OUTPUTS, "service")

_ESM_DONE = re.compile(
    r"ESM: Lambda (?P<fn>\S+) processed (?P<n>\d+) SQS messages from (?P<q>\S+)(?: \((?P<k>\d+) partial failures\))?"
)
_ESM_FAILED = re.compile(r"ESM: Lambda (?P<fn>\S+) failed processing SQS batch from (?P<q>\S+)")
_REPORT = re.compile(r"REPORT RequestId: \S+\s+Duration: (?P<ms>[\d.]+) ms")
#: The splitter's backpressure line (`Splitter._room_for`).
_GATE_WAIT = re.compile(r"waited (?P<s>[\d.]+) s for its queue to drain")

BASELINE_HANDLER = 'def handler(event, context):\n    return {"batchItemFailures": []}\n'


class BenchError(RuntimeError):
    """The bench could not measure something; the message says what and where to look."""


@dataclass
class BaselineResult:
    messages: int
    seconds: float
    batches: int
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds by process group while it ran

    @property
    def items_per_s(self) -> float:
        return self.messages / self.seconds


class BenchStack:
    """The local stack plus the bench's proxy and no-op services. Use as a context manager."""

    def __init__(self, *, items: int, echo: Echo, workdir: Path | None = None, enforce_iam: bool = True) -> None:
        root = project_root()
        self.ws = Workspace(root=root, workdir=(workdir or root / ".microprocess" / "bench").resolve())
        self.items = items
        self.echo = echo
        self.enforce_iam = enforce_iam
        self.stack = LocalStack(self.ws, echo=lambda line: echo(f"  {line}"))
        self.handles: list[ProcessHandle] = []
        self.endpoint = ""
        self.state: LocalState | None = None
        self.outputs: dict[str, str] = {}
        self.functions: dict[str, str] = {}
        self.original_env: dict[str, dict[str, str]] = {}
        self.proxy_ports: dict[str, int] = {}
        self.control_port = 0
        self.noop_urls: dict[bool, str] = {}  # counted? -> URL
        self.setup_seconds = 0.0

    # ------------------------------------------------------------------ set-up

    def __enter__(self) -> BenchStack:
        started = time.monotonic()
        try:
            # `up` stops what it started if it fails; a stack already running here is left alone.
            # The cost model reads each DynamoDB request's consumed capacity (the proxy cannot ask for it).
            state = self.stack.up(
                UpOptions(items=self.items, emulator_env={CONSUMED_CAPACITY_ENV: "1"}, enforce_iam=self.enforce_iam)
            )
        except StackAlreadyRunning:
            raise BenchError(
                f"an earlier bench's local stack is still running in {self.ws.workdir}; stop it with "
                f"`MICROPROCESS_WORKDIR={self.ws.workdir} microprocess local down`"
            ) from None
        try:
            self.endpoint = state.endpoint_url
            self.state = state
            self.outputs = dict(state.outputs)
            self.functions = {role: self.outputs[key] for role, key in FUNCTION_OUTPUTS.items() if key in self.outputs}
            missing = {"splitter", "forwarder"} - set(self.functions)
            if missing:
                raise BenchError(
                    f"the local stack has no function for {sorted(missing)} (outputs {sorted(self.outputs)})"
                )
            lam = self.client("lambda")
            self.original_env = {
                role: dict(
                    lam.get_function_configuration(FunctionName=name).get("Environment", {}).get("Variables", {})
                )
                for role, name in self.functions.items()
            }
            self._start_proxy()
            for counted in (False, True):
                self._start_noop_service(counted)
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - started
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for h in reversed(self.handles):
            try:
                stop(h.pid, h.start_ticks)
            except Exception as exc:  # keep stopping the rest
                self.echo(f"could not stop {h.name} (pid {h.pid}): {exc}")
        self.handles.clear()
        self.stack.down()

    def client(self, service: str) -> Any:
        """A client straight to the emulator (not counted)."""
        assert self.state is not None
        return self.state.client(service, max_pool_connections=32)

    def _start_proxy(self) -> None:
        ddb = self.client("dynamodb")
        schemas = {}
        tables = [self.outputs["LedgerTable"], *json.loads(self.outputs.get("SourceTables") or "{}").values()]
        for table in tables:
            if table:
                desc = ddb.describe_table(TableName=table)["Table"]["KeySchema"]
                hash_first = sorted(desc, key=lambda k: k["KeyType"] != "HASH")
                schemas[table] = [k["AttributeName"] for k in hash_first]
        ports_file = self.ws.workdir / "bench-proxy-ports.json"
        ports_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "bench.proxy", "--upstream", self.endpoint, "--key-schemas", json.dumps(schemas)]
        argv += ["--ports-file", str(ports_file)]
        assert self.state is not None
        if self.state.ca_bundle:
            argv += ["--ca", self.state.ca_bundle]
        for caller in CALLERS:
            argv += ["--caller", caller]
        handle = spawn("bench-proxy", argv, env=aws_env(), cwd=self.ws.root, log=self.ws.log("bench-proxy"))
        self.handles.append(handle)
        deadline = time.monotonic() + 20
        while not ports_file.is_file():
            if time.monotonic() > deadline:
                raise BenchError(f"the counting proxy did not start; see {handle.log}")
            time.sleep(0.05)
        ports = json.loads(ports_file.read_text())
        self.proxy_ports = {k: int(v) for k, v in ports["callers"].items()}
        self.control_port = int(ports["control"])

    def seed_more(self, items: int) -> float:
        """Grow the job's source table to `items` items (the same seeder and seed as `local up`); seconds taken."""
        started = time.monotonic()
        source = CREDIT_SCORES.source
        role = getattr(source, "table", None)
        tables = json.loads(self.outputs.get("SourceTables") or "{}")
        if not isinstance(role, str) or role not in tables:
            raise BenchError(f"job '{CREDIT_SCORES.name}' reads no seeded table (SourceTables {tables})")
        decl = self.stack.declarations.tables[role]
        if not decl.local_seed:
            raise BenchError(f"table '{role}' has no local_seed to grow it with")
        module_name, _, attr = decl.local_seed.partition(":")
        seeder = getattr(importlib.import_module(module_name), attr)
        if items > self.items:
            client = self.client("dynamodb")
            seeder(client, tables[role], items - self.items, seed=UpOptions().seed, start=self.items + 1)
        self.items = items
        return time.monotonic() - started

    def proxy_url(self, caller: str) -> str:
        return f"http://127.0.0.1:{self.proxy_ports[caller]}"

    def _start_noop_service(self, counted: bool) -> None:
        name = f"bench-noop-service-{'counted' if counted else 'plain'}"
        self.noop_urls[counted] = self.spawn_noop_service(name, counted=counted)

    def spawn_noop_service(self, name: str, *, counted: bool = False, extra_env: dict[str, str] | None = None) -> str:
        """Start a bench service process (`bench.noop_service:app`) in the push process's role; its URL."""
        from microprocess.local.processes import free_port

        port = free_port()
        assert self.state is not None
        process = self.push_process()
        env = service_env(
            process,
            declarations=self.stack.declarations,
            endpoint_url=self.proxy_url("service") if counted else self.endpoint,
            ca_bundle=self.state.ca_bundle,
            aws_profile=write_role_profile(
                self.ws.workdir / "aws" / f"{name}.config",
                role_arn=role_of(process, self.outputs),
                session_name=process.process,
            ),
            outputs=self.outputs,
            ses_sender=ses_sender(self.ws.root, self.outputs),
        )
        env.update(extra_env or {})
        argv = [sys.executable, "-m", "uvicorn", "bench.noop_service:app", "--app-dir", str(self.ws.root)]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log"]
        handle = spawn(name, argv, env=env, cwd=self.ws.root, log=self.ws.log(name))
        self.handles.append(handle)
        url = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{url}/healthz", handle, timeout_s=60)
        return url

    def push_process(self) -> ServiceProcess:
        """The local process of the job's service that takes the forwarder's pushes (its environment is the no-op's)."""
        service = self.stack.declarations.services.get(CREDIT_SCORES.service)
        found = [p for p in processes_of(service) if p.pushes]
        if not found:
            raise BenchError(f"service '{service.name}' has no local process that takes pushes (no local_app)")
        return found[0]

    def point_functions(self, *, counted: bool, url: str | None = None) -> None:
        """Point the forwarder and the reducer at a no-op service (or at `url`), and (counted) every function
        at its proxy port."""
        lam = self.client("lambda")
        for role, name in self.functions.items():
            env = dict(self.original_env[role])
            if counted:
                env["AWS_ENDPOINT_URL"] = self.proxy_url(role)
            if "SERVICE_ENDPOINTS" in env:
                endpoints = json.loads(env["SERVICE_ENDPOINTS"])
                if CREDIT_SCORES.service not in endpoints:
                    raise BenchError(f"the {role}'s SERVICE_ENDPOINTS has no '{CREDIT_SCORES.service}': {endpoints}")
                endpoints[CREDIT_SCORES.service] = {
                    **endpoints[CREDIT_SCORES.service],
                    "url": url or self.noop_urls[counted],
                }
                env["SERVICE_ENDPOINTS"] = json.dumps(endpoints)
            lam.update_function_configuration(FunctionName=name, Environment={"Variables": env})
        # New environment, new workers: start as many as the event sources may run at once, as `local up` does.
        warm_workers(lam, self.functions["forwarder"], forwarder_workers(self.concurrency(), self.stack.declarations))
        warm_reducers(lam, self.functions.get("reducer"))

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far by the emulator, its Lambda workers, the no-op services, the proxy
        and this process (Linux `/proc`; zeros elsewhere)."""
        emulator = self.stack.handles.get("ministack")
        by_name = {h.name: h.pid for h in self.handles}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out = {
            "emulator": _cpu(emulator.pid) if emulator else 0.0,
            "lambda_workers": sum(_cpu(pid, children=True) for pid in descendants(emulator.pid)) if emulator else 0.0,
            "noop_services": sum(_cpu(pid) for name, pid in by_name.items() if name.startswith("bench-noop")),
            "proxy": _cpu(by_name["bench-proxy"]) if "bench-proxy" in by_name else 0.0,
            "bench": usage.ru_utime + usage.ru_stime,
        }
        return {k: round(v, 2) for k, v in out.items()}

    def function_cpu_seconds(self) -> dict[int, tuple[str, float]]:
        """{pid: (function name, CPU seconds so far)} of the emulator's Lambda worker processes, by the
        AWS_LAMBDA_FUNCTION_NAME in each worker's environment (Linux `/proc`; empty elsewhere)."""
        emulator = self.stack.handles.get("ministack")
        if emulator is None:
            return {}
        out: dict[int, tuple[str, float]] = {}
        for pid in descendants(emulator.pid):
            name = _function_name(pid)
            if name:
                out[pid] = (name, _cpu(pid))
        return out

    def concurrency(self) -> int:
        esm = self.event_source("forwarder")
        return int((esm.get("ScalingConfig") or {}).get("MaximumConcurrency") or CREDIT_SCORES.max_concurrency)

    # ------------------------------------------------------------------ readings

    def config(self, role: str) -> dict[str, Any]:
        return self.client("lambda").get_function_configuration(FunctionName=self.functions[role])

    def event_source(self, role: str) -> dict[str, Any]:
        """The function's event source mapping; the forwarder's is the one on the bench job's task queue."""
        mappings = self.client("lambda").list_event_source_mappings(FunctionName=self.functions[role])
        found = mappings.get("EventSourceMappings", [])
        if role == "forwarder":
            queue_url = json.loads(self.outputs.get("JobQueueUrls") or "{}").get(CREDIT_SCORES.name, "")
            queue_name = queue_url.rstrip("/").rsplit("/", 1)[-1]
            found = [m for m in found if queue_name and m.get("EventSourceArn", "").endswith(f":{queue_name}")]
        if not found:
            raise BenchError(f"the {role} function has no event source mapping (for job '{CREDIT_SCORES.name}')")
        return found[0]

    def proxy_stats(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.control_port}/stats", timeout=30) as resp:
            return json.loads(resp.read())

    def proxy_reset(self) -> None:
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.control_port}/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).close()

    @property
    def emulator_log(self) -> Path:
        return self.ws.log("ministack")

    def log_offset(self) -> int:
        return self.emulator_log.stat().st_size if self.emulator_log.exists() else 0

    def event_source_batches(self, since: int) -> dict[str, EventSourceUse]:
        """Batches per function name in the emulator's log after byte `since`."""
        uses: dict[str, EventSourceUse] = {}
        with self.emulator_log.open("rb") as f:
            f.seek(since)
            for raw in f:
                line = raw.decode(errors="replace")
                if "ESM: Lambda" not in line:
                    continue
                m = _ESM_DONE.search(line)
                if m:
                    u = uses.setdefault(m["fn"], EventSourceUse())
                    failed = int(m["k"] or 0)
                    u.batches += 1
                    u.messages += int(m["n"]) + failed
                    u.partial_failures += failed
                    continue
                m = _ESM_FAILED.search(line)
                if m:
                    u = uses.setdefault(m["fn"], EventSourceUse())
                    u.batches += 1
                    u.failed_batches += 1
        return uses

    def function_use(self, role: str, since_ms: int) -> FunctionUse:
        """Invocations, total duration and log bytes of one function since `since_ms`, from its log group."""
        conf = self.config(role)
        group = log_group_of(conf, self.functions[role])
        use = FunctionUse(memory_mb=int(conf.get("MemorySize", 128)))
        for message in log_messages(self.client("logs"), group, since_ms, int(time.time() * 1000) + 1000):
            use.log_bytes += len(message.encode()) + 26  # CloudWatch Logs bills 26 bytes per event on top
            m = _REPORT.search(message)
            if m:
                use.invocations += 1
                use.duration_s += float(m["ms"]) / 1000
                continue
            w = _GATE_WAIT.search(message)
            if w:
                use.waited_s += float(w["s"])
        return use


def _cpu(pid: int, *, children: bool = False) -> float:
    """utime + stime of `pid` (and of its reaped children), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 overall)
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _function_name(pid: int) -> str:
    """AWS_LAMBDA_FUNCTION_NAME in the environment of `pid` ('' when none or unreadable)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return ""
    for entry in environ.split(b"\0"):
        if entry.startswith(b"AWS_LAMBDA_FUNCTION_NAME="):
            return entry.split(b"=", 1)[1].decode(errors="replace")
    return ""


def cpu_by_function(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per function name between two `function_cpu_seconds` readings (a worker started
    in between counts from zero; one that exited in between is lost, and the bench warms workers first)."""
    out: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        was = before.get(pid)
        used = cpu - was[1] if was is not None and was[0] == name else cpu
        out[name] = out.get(name, 0.0) + max(used, 0.0)
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after.get(k, 0.0) - before.get(k, 0.0), 2) for k in after}


# ----------------------------------------------------------------------------- P1 (b)


def envelope_bodies(n: int) -> list[str]:
    """`n` message bodies of the real shape and size: task envelopes of seeded companies."""
    from microprocess.pipeline.envelope import TaskEnvelope, shard_of
    from microservice.domain import generate_companies

    job = CREDIT_SCORES
    bodies = []
    for i, company in enumerate(generate_companies(n)):
        task_id = f"{i % 4}-{i:09d}"
        env = TaskEnvelope(
            job=job.name,
            run_id="bench-baseline",
            task_id=task_id,
            shard=shard_of(task_id, job.shard_count),
            item=company,
        )
        bodies.append(env.to_json())
    return bodies


def run_baseline(bs: BenchStack, n: int, *, timeout_s: float = 240.0) -> BaselineResult:
    """P1 (b): `n` messages through the same emulator's event source into a trivial handler,
    with the forwarder's batch size and maximum concurrency; timed from the first send to
    the queue being empty."""
    fwd_esm = bs.event_source("forwarder")
    fwd_conf = bs.config("forwarder")
    sqs, lam = bs.client("sqs"), bs.client("lambda")
    stamp = time.strftime("%H%M%S")
    queue_url = sqs.create_queue(
        QueueName=f"bench-baseline-{stamp}",
        Attributes={"VisibilityTimeout": str(max(int(fwd_conf.get("Timeout", 30)) * 6, 30))},
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as z:
        z.writestr("handler.py", BASELINE_HANDLER)
    name = f"bench-baseline-{stamp}"
    lam.create_function(
        FunctionName=name,
        Runtime=fwd_conf.get("Runtime", "python3.11"),
        Role="arn:aws:iam::000000000000:role/bench-baseline",
        Handler="handler.handler",
        Code={"ZipFile": code.getvalue()},
        MemorySize=int(fwd_conf.get("MemorySize", 512)),
        Timeout=int(fwd_conf.get("Timeout", 30)),
    )
    mapping: dict[str, Any] = {
        "EventSourceArn": arn,
        "FunctionName": name,
        "BatchSize": int(fwd_esm.get("BatchSize", 10)),
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
        "MaximumBatchingWindowInSeconds": int(fwd_esm.get("MaximumBatchingWindowInSeconds", 0)),
    }
    if fwd_esm.get("ScalingConfig"):
        mapping["ScalingConfig"] = fwd_esm["ScalingConfig"]
    warm_workers(lam, name, bs.concurrency())  # as the forwarder's are
    uuid = lam.create_event_source_mapping(**mapping)["UUID"]
    bodies = envelope_bodies(n)
    offset = bs.log_offset()
    sender = QueueSender(client=sqs, queue_url=queue_url, threads=SEND_THREADS)
    cpu_before = bs.cpu_seconds()
    try:
        started = time.monotonic()
        sender.send(bodies)
        deadline = started + timeout_s
        while True:
            attrs = sqs.get_queue_attributes(
                QueueUrl=queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            if int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"]) == 0:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the baseline queue did not drain in {timeout_s:.0f} s ({attrs})")
            time.sleep(0.1)
        seconds = time.monotonic() - started
        cpu = cpu_delta(cpu_before, bs.cpu_seconds())
    finally:
        lam.delete_event_source_mapping(UUID=uuid)
    batches = bs.event_source_batches(offset).get(name, EventSourceUse())
    if batches.messages < n:
        raise BenchError(f"the baseline handler saw {batches.messages} of {n} messages; see {bs.emulator_log}")
    lam.delete_function(FunctionName=name)
    sqs.delete_queue(QueueUrl=queue_url)
    return BaselineResult(messages=n, seconds=seconds, batches=batches.batches, cpu_s=cpu)


# ----------------------------------------------------------------------------- P1 (a)


@dataclass
class PipelineRun:
    """One run of the job through the whole pipeline, as the bench saw it."""

    counted: bool
    run: dict[str, Any]
    started_at: float
    last_completion_at: float
    email_at: float | None
    emails: int
    event_sources: dict[str, EventSourceUse]
    functions: dict[str, FunctionUse]
    proxy: dict[str, Any] | None
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds by process group, start to end

    @property
    def seconds(self) -> float:
        """From the start request to the reduce claim (the moment every task is terminal)."""
        return (parse_time(self.run["reduce_claimed_at"]) or 0.0) - self.started_at

    @property
    def items_per_s(self) -> float:
        return float(self.run["expected"]) / self.seconds


def start_run(bs: BenchStack, job: str, run_id: str) -> None:
    """Start a run of `job` as a manual start does: an asynchronous invoke of the splitter."""
    resp = bs.client("lambda").invoke(
        FunctionName=bs.functions["splitter"],
        InvocationType="Event",
        Payload=json.dumps({"job": job, "run_id": run_id, "source": "manual"}).encode(),
    )
    if resp.get("StatusCode") != 202:
        raise BenchError(f"the splitter did not accept the start (HTTP {resp.get('StatusCode')})")


#: A run's record appears once its splitter accepted the start; later, the start was refused.
APPEAR_WITHIN_S = 120.0


def wait_until_ended(
    ledger: Any,
    run_id: str,
    *,
    started: float,
    timeout_s: float,
    echo: Echo,
    indent: str = "  ",
    appear_within_s: float = APPEAR_WITHIN_S,
) -> Any:
    """Poll the run until it ends (returns its terminal record), its progress echoed every 10 s;
    `BenchError` when it has not ended `timeout_s` after `started` (epoch seconds), or when its
    record has not appeared `appear_within_s` after the wait began (the splitter refused the start)."""
    last_report = waiting_since = time.time()
    while True:
        run = ledger.get_run(run_id)
        if run is not None and run.status.terminal:
            return run
        if run is None and time.time() - waiting_since > appear_within_s:
            raise BenchError(
                f"run {run_id} has no record {appear_within_s:.0f} s after its start: the splitter refused or "
                "failed the start (its reason is in the stack's logs/ministack.log)"
            )
        if time.time() - started > timeout_s:
            raise BenchError(f"run {run_id} did not finish in {timeout_s:.0f} s (status {run and run.status})")
        if time.time() - last_report > 10 and run is not None:
            p = ledger.progress(run_id)
            echo(f"{indent}{p.succeeded + p.failed:,}/{p.expected:,} done ({p.failed:,} FAILED), {run.status}")
            last_report = time.time()
        time.sleep(0.25)


def run_pipeline(bs: BenchStack, *, counted: bool, timeout_s: float | None = None, echo: Echo = print) -> PipelineRun:
    """P1 (a): one run of the credit-scores job over the seeded companies through the whole
    pipeline, against the no-op task endpoint; with `counted`, every AWS call goes through the proxy.
    The functions' `cpu_s` is their worker processes' CPU time during the run."""
    job = CREDIT_SCORES
    if timeout_s is None:
        timeout_s = 400.0 + bs.items / 50  # generous: a stuck run is reported, a slow one is measured
    bs.point_functions(counted=counted)
    ledger = Ledger(bs.outputs["LedgerTable"], client=bs.client("dynamodb"))
    if counted:
        bs.proxy_reset()
    offset = bs.log_offset()
    # a run id starts with its job's name (the deployed splitter refuses others: run_keys)
    run_id = f"{job.name}-bench-{'counted' if counted else 'plain'}-{time.strftime('%Y%m%dT%H%M%S')}"
    since_ms = int(time.time() * 1000)
    cpu_before = bs.cpu_seconds()
    fn_cpu_before = bs.function_cpu_seconds()
    started = time.time()
    start_run(bs, job.name, run_id)
    run = wait_until_ended(ledger, run_id, started=started, timeout_s=timeout_s, echo=echo)
    cpu = cpu_delta(cpu_before, bs.cpu_seconds())
    fn_cpu = cpu_by_function(fn_cpu_before, bs.function_cpu_seconds())
    if run.status is not RunStatus.SUCCEEDED:
        raise BenchError(f"run {run_id} ended {run.status}: {run.error}")
    finished = [t.finished_at for k in range(run.shard_count) for t in ledger.iter_results(run_id, k)]
    if len(finished) != run.expected:
        raise BenchError(f"run {run_id}: {len(finished)} task records for {run.expected} expected")
    emails = [
        m
        for m in captured_emails(bs.endpoint, bs.state.ca_bundle if bs.state else None)
        if any(run_id in (m.get(k) or "") for k in ("Subject", "BodyText", "BodyHtml"))
    ]
    time.sleep(1.0)  # let the last log lines land
    names = {name: role for role, name in bs.functions.items()}
    functions = {role: bs.function_use(role, since_ms) for role in bs.functions}
    for role, use in functions.items():
        use.cpu_s = round(fn_cpu.get(bs.functions[role], 0.0), 3)
    for role in ("splitter", "forwarder"):
        if not functions[role].invocations:
            raise BenchError(f"no REPORT line of the {role} in its log group since the start; see {bs.emulator_log}")
    return PipelineRun(
        counted=counted,
        run={
            "run_id": run_id,
            "expected": run.expected,
            "created_at": run.created_at,
            "split_finished_at": run.split_finished_at,
            "reduce_claimed_at": run.reduce_claimed_at,
            "finished_at": run.finished_at,
            "status": str(run.status),
        },
        started_at=started,
        last_completion_at=max(parse_time(t) or 0.0 for t in finished),
        email_at=float(emails[-1]["Timestamp"]) if emails and emails[-1].get("Timestamp") else None,
        emails=len(emails),
        event_sources={names[fn]: u for fn, u in bs.event_source_batches(offset).items() if fn in names},
        functions=functions,
        proxy=bs.proxy_stats() if counted else None,
        cpu_s=cpu,
    )


def observe(bs: BenchStack, plain: PipelineRun, counted: PipelineRun) -> Observed:
    """What the figures are made of: requests, units and batches from the counted run; the
    functions' durations, the throughput and the latencies from the plain run (no proxy in the way)."""
    fwd_esm = bs.event_source("forwarder")
    splitter_conf = bs.config("splitter")
    margin_ms = int(
        splitter_conf.get("Environment", {}).get("Variables", {}).get("SPLITTER_MARGIN_MS")
        or RuntimeSettings.model_fields["splitter_margin_ms"].default
    )
    assert counted.proxy is not None
    return Observed(
        items=int(counted.run["expected"]),
        proxy=counted.proxy,
        functions=plain.functions,
        event_sources=counted.event_sources,
        ledger_table=bs.outputs["LedgerTable"],
        batch_size=int(fwd_esm.get("BatchSize", CREDIT_SCORES.batch_size)),
        max_concurrency=bs.concurrency(),
        splitter_timeout_s=float(splitter_conf.get("Timeout", 900)),
        splitter_margin_s=margin_ms / 1000.0,
        run=plain.run,
        started_at=plain.started_at,
        last_completion_at=plain.last_completion_at,
        email_at=plain.email_at,
    )
