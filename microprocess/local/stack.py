"""The embedded local stack: emulator, deployed local stage, the declared services' processes.

`LocalStack.up` starts everything, records it in `local.json` as it goes (so that
`local down` can stop even a half-started stack), and stops what it started if any
step fails. `stop_recorded` stops exactly the processes `local.json` names.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from microprocess.declarations import Declarations, get_declarations
from microprocess.local.calls import CALL_LOG_ENV
from microprocess.local.deploy import deploy_local_stage
from microprocess.local.emulator import REGION, aws_client, emulator_env, endpoint_of, start_emulator
from microprocess.local.processes import (
    ProcessError,
    ProcessHandle,
    free_port,
    is_running,
    log_tail,
    stop,
    wait_port_open,
)
from microprocess.local.sender import ses_sender
from microprocess.local.services import (
    ServiceProcess,
    plan_processes,
    role_of,
    service_env,
    spawn_service,
    write_role_profile,
)
from microprocess.local.state import LocalState, NoLocalStack, read_state, write_state
from microprocess.local.tls import LocalTls
from microprocess.local.tuning import forwarder_workers, laptop_concurrency, warm_reducers, warm_workers
from microprocess.local.workspace import Workspace
from microprocess.stacks import LOCAL_STACK

Echo = Callable[[str], None]

#: The local push queues' visibility timeout (task and reduce queue): a crashed forwarder
#: batch is retried after this long (on AWS: 6 x each queue's forwarder timeout).
LOCAL_VISIBILITY_TIMEOUT_S = 20
#: The local sweeper runs every minute and acts on a run quiet for this long, so that a dead
#: splitter is restarted within about a minute (on AWS: every 5 minutes, after 15 quiet minutes).
LOCAL_SWEEPER_RATE_MINUTES = 1
LOCAL_STUCK_AFTER_S = 45
#: The deepest a job's queue gets locally before the splitter waits. ministack scans the whole
#: queue per receive: a receive + delete + send of 10 measured 4.0 ms at 500 waiting, 4.9 ms at
#: 2,000, 7.5 ms at 5,000 and 13.7 ms at 10,000. 2,000 is still ~2 s of the forwarder's work here
#: (the splitter reads the depth every 2 s); at 5,000 the 100,000-item bench ran ~10 % slower.
LOCAL_MAX_QUEUE_DEPTH = 2000


class LocalStackError(RuntimeError):
    """The local stack could not be started or stopped; the message says what to do."""


class StackAlreadyRunning(LocalStackError):
    pass


@dataclass(frozen=True)
class UpOptions:
    """How to start the local stack.

    Attributes:
        items: items seeded into each declared table that has a `local_seed` (None: its `local_items`).
        chaos: a fault file given to the services' push endpoints and the functions (`MICROPROCESS_CHAOS`).
        seed: random seed of the seeded items.
        service_urls: services the user runs themselves (`--service NAME=URL`): no process is started for them.
        start_examples: start the declared services' local processes (False: `--no-example-service`;
            every service then needs a URL in `service_urls`).
        access_log: log every HTTP request of the services (slower; useful when debugging).
        forwarder_concurrency: cap on concurrent forwarder batches; None: `laptop_concurrency()`
            (4 per core); 0: as deployed (the job's declaration).
        warm: start the forwarder's workers during set-up, so that run time does not pay their imports.
        max_queue_depth: the depth at which the splitter waits for a job's queue to drain (see
            `LOCAL_MAX_QUEUE_DEPTH`; a test that needs a run's split done early sets it higher).
        emulator_env: more variables for the emulator (and so the functions), e.g. the bench's
            `MICROPROCESS_DYNAMODB_CONSUMED_CAPACITY`.
        enforce_iam: IAM enforced (always, but for `bench.iam_cost`, which measures what enforcing costs).
    """

    items: int | None = None
    chaos: Path | None = None
    service_urls: dict[str, str] = field(default_factory=dict)
    start_examples: bool = True
    seed: int = 42
    access_log: bool = False
    forwarder_concurrency: int | None = None
    warm: bool = True
    max_queue_depth: int = LOCAL_MAX_QUEUE_DEPTH
    emulator_env: dict[str, str] = field(default_factory=dict)
    enforce_iam: bool = True


@dataclass
class SetupTimings:
    """Seconds spent in each set-up step."""

    steps: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.steps.values())

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.steps.items())
        return f"{self.total:.1f} s ({parts})"


def seed_tables(
    ws: Workspace,
    declarations: Declarations,
    endpoint_url: str,
    tables: dict[str, str],
    n: int | None,
    *,
    seed: int,
    ca_bundle: str | None = None,
) -> dict[str, int]:
    """Fill every declared table that has a `local_seed` with `n` items (None: its `local_items`),
    using the seeder the declaration names. Returns the items seeded per table role."""
    folder = str(declarations.path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(
            0, folder
        )  # seeders live in the project (the declaration file's folder), not installed packages
    seeded: dict[str, int] = {}
    for role, table in declarations.tables.items():
        if not table.local_seed:
            continue
        count = table.local_items if n is None else n
        module_name, _, attr = table.local_seed.partition(":")
        try:
            seeder = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise LocalStackError(
                f"cannot seed the table '{role}': its local_seed '{table.local_seed}' cannot be imported ({exc}); "
                f"fix [tables.{role}] local_seed in {declarations.path}"
            ) from None
        client = aws_client("dynamodb", endpoint_url, ca_bundle=ca_bundle, max_pool_connections=32)
        seeder(client, tables[role], count, seed=seed)
        seeded[role] = count
    return seeded


class LocalStack:
    """Starts and stops one local stack in `ws`.

    Args:
        ws: the work folder.
        echo: where progress lines go.
        declarations: the team's jobs, services and tables (default: `get_declarations()`).
    """

    def __init__(self, ws: Workspace, *, echo: Echo = print, declarations: Declarations | None = None) -> None:
        self.ws = ws
        self.echo = echo
        self.declarations = declarations or get_declarations()
        self.processes: dict[str, ServiceProcess] = {}
        self.handles: dict[str, ProcessHandle] = {}
        self.state: LocalState | None = None
        self.timings = SetupTimings()
        self._pending_outputs: dict[str, str] = {}
        self._options = UpOptions()
        self._owns_state = False  # True once this object has claimed the work folder for its stack
        self.tls = LocalTls(ws.tls)

    # ------------------------------------------------------------------ up

    def up(self, options: UpOptions | None = None) -> LocalState:
        """Start the stack; on any failure stop what was started and re-raise."""
        options = options or UpOptions()
        self._options = options
        self._refuse_if_running()
        self._fresh_workdir()
        try:
            return self._up(options)
        except BaseException:
            self.down()
            raise

    def _refuse_if_running(self) -> None:
        try:
            previous = read_state(self.ws.state_file)
        except NoLocalStack:
            return
        alive = previous.running()
        if alive:
            raise StackAlreadyRunning(
                f"a local stack is already running from {self.ws.workdir} (processes {alive}); "
                "use it, or stop it with `microprocess local down`"
            )

    def _fresh_workdir(self) -> None:
        # Persistence is off: state, S3 data, Lambda code folders and logs of an earlier stack are stale.
        for folder in (self.ws.tmp, self.ws.emulator_state, self.ws.s3_data, self.ws.logs):
            shutil.rmtree(folder, ignore_errors=True)
        self.ws.state_file.unlink(missing_ok=True)
        self._owns_state = True
        self.ws.create()

    def _step(self, name: str, started: float) -> None:
        self.timings.steps[name] = time.monotonic() - started

    def _up(self, options: UpOptions) -> LocalState:
        chaos = options.chaos.resolve() if options.chaos else None
        if chaos is not None and not chaos.is_file():
            raise LocalStackError(f"--chaos {options.chaos}: no such file")
        t = time.monotonic()
        self.tls = LocalTls(self.ws.tls).ensure()
        handle, port = self._start_emulator(chaos)
        endpoint = endpoint_of(port)
        self.handles["ministack"] = handle
        self._record(endpoint)
        self._step("emulator", t)
        self.echo(f"emulator ready at {endpoint} (pid {handle.pid})")

        planned = plan_processes(self.declarations, options.service_urls, start_examples=options.start_examples)
        ports: dict[str, int] = {}
        for proc in planned:
            port = free_port()
            while port in ports.values():
                port = free_port()
            ports[proc.key] = port
        urls = {key: f"http://127.0.0.1:{port}" for key, port in ports.items()}
        urls.update(options.service_urls)  # the services the user runs themselves
        push_urls = {name: urls[name] for name in self.declarations.services.names()}

        t = time.monotonic()
        outputs, cdk_steps = deploy_local_stage(
            self.ws,
            endpoint,
            self.tls,
            declarations_file=self.declarations.path,
            service_urls=push_urls,
            extra_context=self._laptop_context(options),
        )
        self.timings.steps.update({f"cdk {k}": v for k, v in cdk_steps.items()})
        self._pending_outputs = outputs
        self.echo(f"deployed the local stage ({len(outputs)} outputs)")

        self._record_stack_resources()
        sender = ses_sender(self.ws.root, outputs)
        lam = self._client("lambda", max_pool_connections=64, read_timeout=120)
        concurrency = self._fit_to_laptop(lam, outputs["ForwarderFunctionName"], options)
        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as pool:
            # Seeding and warming (emulator-bound) overlap the services' start (interpreter-bound).
            seeding = pool.submit(
                seed_tables,
                self.ws,
                self.declarations,
                endpoint,
                json.loads(outputs.get("SourceTables") or "{}"),
                options.items,
                seed=options.seed,
                ca_bundle=str(self.tls.ca_cert),
            )
            warm = forwarder_workers(concurrency, self.declarations) if options.warm else 0
            warming = pool.submit(warm_workers, lam, outputs["ForwarderFunctionName"], warm)
            reducers = pool.submit(warm_reducers, lam, outputs.get("ReduceForwarderFunctionName"), options.warm)
            self._start_services(endpoint, outputs, planned, ports, sender, chaos, options.access_log)
            self._record(endpoint, urls=urls)
            seeded = seeding.result()
            warmed = warming.result()
            reducers.result()
        self._step("services+seed+warm", t)
        seeded_text = ", ".join(f"{n:,} items into {role}" for role, n in seeded.items()) or "nothing"
        self.echo(
            "services up: "
            + ", ".join(f"{key} {url}" for key, url in urls.items())
            + f"; seeded {seeded_text}; {warmed} forwarder workers warm"
        )

        ses = self._client("ses")
        ses.verify_email_identity(EmailAddress=sender)
        state = self._record(endpoint, urls=urls)
        return state

    def _start_emulator(self, chaos: Path | None, attempts: int = 3) -> tuple[ProcessHandle, int]:
        # The free port can be taken between choosing it and binding it (parallel test runs): retry.
        for attempt in range(attempts):
            port = free_port()
            try:
                env = emulator_env(
                    self.ws,
                    port,
                    self.tls,
                    chaos=chaos,
                    extra=self._options.emulator_env,
                    enforce_iam=self._options.enforce_iam,
                )
                return start_emulator(self.ws, port, self.tls, env), port
            except ProcessError as exc:
                if "already in use" not in str(exc) or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _laptop_context(options: UpOptions) -> dict[str, str]:
        """CDK context that fits the local stage to this laptop (concurrency 0: as the jobs declare)."""
        # Both push queues: a crashed forwarder's (or reducer's) batch comes back in seconds.
        context = {
            "task_visibility_timeout_s": str(LOCAL_VISIBILITY_TIMEOUT_S),
            "reduce_visibility_timeout_s": str(LOCAL_VISIBILITY_TIMEOUT_S),
            "sweeper_rate_minutes": str(LOCAL_SWEEPER_RATE_MINUTES),
            "stuck_after_s": str(LOCAL_STUCK_AFTER_S),
            # ministack's receives cost more the deeper the queue: the splitter waits past this depth.
            "max_queue_depth_cap": str(options.max_queue_depth),
        }
        if options.forwarder_concurrency != 0:
            context["forwarder_max_concurrency"] = str(options.forwarder_concurrency or laptop_concurrency())
        return context

    def _fit_to_laptop(self, lam: Any, forwarder: str, options: UpOptions) -> int:
        """The forwarder event source's concurrency as deployed (from the CDK app's context)."""
        mappings = lam.list_event_source_mappings(FunctionName=forwarder)["EventSourceMappings"]
        deployed = max((m.get("ScalingConfig") or {}).get("MaximumConcurrency") or 5 for m in mappings)
        self.echo(f"forwarder event source: {deployed} concurrent batches ({os.cpu_count()} cores)")
        return deployed

    def _start_services(
        self,
        endpoint: str,
        outputs: dict[str, str],
        planned: list[ServiceProcess],
        ports: dict[str, int],
        sender: str,
        chaos: Path | None,
        access_log: bool,
    ) -> None:
        for proc in planned:
            env = service_env(
                proc,
                declarations=self.declarations,
                endpoint_url=endpoint,
                ca_bundle=str(self.tls.ca_cert),
                aws_profile=self._role_profile(proc, outputs),
                outputs=outputs,
                ses_sender=sender,
                chaos=chaos,
            )
            self.handles[proc.process] = spawn_service(
                self.ws, proc, ports[proc.key], env, folder=self.declarations.path.parent, access_log=access_log
            )
            self.processes[proc.key] = proc
            self._record(endpoint)
        for proc in planned:
            wait_port_open(ports[proc.key], self.handles[proc.process], timeout_s=60)

    def _record(self, endpoint: str, *, urls: dict[str, str] | None = None) -> LocalState:
        previous = self.state
        state = LocalState(
            endpoint_url=endpoint,
            region=REGION,
            outputs=dict(self._pending_outputs),
            services=urls if urls is not None else (previous.services if previous else {}),
            pids={name: h.pid for name, h in self.handles.items()},
            process_start_ticks={name: h.start_ticks for name, h in self.handles.items()},
            workdir=str(self.ws.workdir),
            ca_bundle=str(self.tls.ca_cert),
            started_at=previous.started_at if previous else datetime.now(UTC).isoformat(timespec="seconds"),
        )
        write_state(self.ws.state_file, state)
        self.state = state
        return state

    def _record_stack_resources(self) -> None:
        """With a call record on (`MICROPROCESS_AWS_CALL_LOG`), keep the deployed stage's physical -> logical
        ids beside it, so that recorded calls can be checked against the cloud template by logical id."""
        folder = os.environ.get(CALL_LOG_ENV)
        if not folder:
            return
        cfn = self._client("cloudformation")
        resources = [
            {k: r.get(k) for k in ("LogicalResourceId", "PhysicalResourceId", "ResourceType")}
            for page in cfn.get_paginator("list_stack_resources").paginate(StackName=LOCAL_STACK)
            for r in page["StackResourceSummaries"]
        ]
        out = Path(folder) / f"stack-resources.{os.getpid()}.{time.monotonic_ns()}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(resources))

    def _role_profile(self, proc: ServiceProcess, outputs: dict[str, str]) -> Path:
        """The AWS config file of `proc`: a session of its role (its cloud task role)."""
        return write_role_profile(
            self.ws.workdir / "aws" / f"{proc.process}.config",
            role_arn=role_of(proc, outputs),
            session_name=proc.process,
        )

    def _client(self, service: str, **config: Any) -> Any:
        assert self.state is not None
        return self.state.client(service, **config)

    # --------------------------------------------------------- maintenance

    def restart_service(self, key: str, *, chaos: Path | None = None, down_s: float = 0.0) -> ProcessHandle:
        """Restart one service process on its port with a new fault file (or none) — used by the e2e tests.

        `key` is its key in `services` (a service's name is its push endpoint); `down_s`: how long
        the port stays closed between the stop and the start (a slow deploy)."""
        if self.state is None:
            raise LocalStackError("the stack is not up")
        proc = self.processes.get(key)
        if proc is None:
            raise LocalStackError(f"no service process '{key}' was started (started: {sorted(self.processes)})")
        url = self.state.services[key]
        port = int(url.rsplit(":", 1)[1])
        old = self.handles.pop(proc.process)
        stop(old.pid, old.start_ticks)
        if down_s > 0:
            time.sleep(down_s)
        env = service_env(
            proc,
            declarations=self.declarations,
            endpoint_url=self.state.endpoint_url,
            ca_bundle=str(self.tls.ca_cert),
            aws_profile=self._role_profile(proc, self.state.outputs),
            outputs=self.state.outputs,
            ses_sender=ses_sender(self.ws.root, self.state.outputs),
            chaos=chaos.resolve() if chaos else None,
        )
        handle = spawn_service(
            self.ws, proc, port, env, folder=self.declarations.path.parent, access_log=self._options.access_log
        )
        self.handles[proc.process] = handle
        wait_port_open(port, handle, timeout_s=60)
        self._record(self.state.endpoint_url, urls=self.state.services)
        return handle

    def wait(self, *, poll_s: float = 0.5) -> str:
        """Block until a process of the stack exits (returns its name) or Ctrl-C (KeyboardInterrupt)."""
        while True:
            for name, h in self.handles.items():
                if not is_running(h.pid, h.start_ticks):
                    return name
            time.sleep(poll_s)

    def exited_message(self, name: str) -> str:
        h = self.handles[name]
        return f"{name} (pid {h.pid}) exited; its log {h.log} ends with:\n{log_tail(h.log)}"

    # ---------------------------------------------------------------- down

    def down(self) -> list[str]:
        """Stop every process this object started (services first), then forget the stack.

        Never touches another stack: if `up` refused to start (one was running), this does nothing.
        """
        stopped = _stop_all(dict(self.handles.items()), self.echo)
        self.handles.clear()
        if self._owns_state:
            self.ws.state_file.unlink(missing_ok=True)
            self._owns_state = False
        return stopped


def _stop_all(handles: dict[str, ProcessHandle], echo: Echo) -> list[str]:
    # The services first, the emulator last (a service may still be answering a push).
    names = [n for n in handles if n != "ministack"] + (["ministack"] if "ministack" in handles else [])
    stopped: list[str] = []
    problems: list[str] = []
    for name in names:
        h = handles[name]
        if not is_running(h.pid, h.start_ticks):
            continue
        try:
            stop(h.pid, h.start_ticks)
            stopped.append(name)
        except ProcessError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise LocalStackError("could not stop: " + "; ".join(problems))
    if stopped:
        echo(f"stopped {', '.join(stopped)}")
    return stopped


def stop_recorded(ws: Workspace, *, echo: Echo = print) -> list[str]:
    """`local down`: stop exactly the processes named in `local.json`, then remove it.

    Raises `NoLocalStack` when there is no `local.json`.
    """
    state = read_state(ws.state_file)
    handles = {
        name: ProcessHandle(name=name, pid=pid, start_ticks=state.process_start_ticks.get(name), log=ws.log(name))
        for name, pid in state.pids.items()
    }
    stopped = _stop_all(handles, echo)
    ws.state_file.unlink(missing_ok=True)
    return stopped
