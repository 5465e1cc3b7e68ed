"""The deployed stack a command works against: the local stack or the AWS deployment
(`connect`), its outputs and clients, and the errors of talking to it (`ledger_errors`).
Tests replace `connect` (`monkeypatch.setattr(deployment, "connect", ...)`): commands call it
through this module."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from microprocess.cli.options import EXIT_NO_STACK, EXIT_TIMEOUT, Target, err, fail
from microprocess.cli.progress import RunNeverStarted, WaitTimeout, watch_run
from microprocess.cli.steer import SteerError
from microprocess.ledger import Ledger, Progress, RunNotFound
from microprocess.stacks import CLOUD_STACK


@dataclass
class Deployment:
    """A deployed stack the CLI works against.

    Attributes:
        name: what to call it in messages.
        outputs: the stack outputs (`LedgerTable`, `SplitterFunctionName`, `JobQueueUrls`, ...).
        client: makes a boto3 client for a service name.
        endpoint_url: the emulator's endpoint (local stack only).
        logs_hint: where to look when a function misbehaves.
    """

    name: str
    outputs: dict[str, str]
    client: Callable[[str], Any]
    endpoint_url: str | None = None
    logs_hint: str = ""

    def output(self, key: str) -> str:
        value = self.outputs.get(key)
        if not value:
            fail(f"the {self.name} stack has no output '{key}' (it has {sorted(self.outputs)})", EXIT_NO_STACK)
        return value

    def ledger(self) -> Ledger:
        return Ledger(self.output("LedgerTable"), client=self.client("dynamodb"))

    def json_output(self, key: str) -> dict[str, Any]:
        """An output that holds a JSON object (`JobQueueUrls`, `SourceTables`, ...)."""
        raw = self.output(key)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            fail(f"the {self.name} stack's output '{key}' is not JSON: {raw[:100]!r}; redeploy it", EXIT_NO_STACK)
        if not isinstance(value, dict):
            fail(f"the {self.name} stack's output '{key}' is not a JSON object; redeploy it", EXIT_NO_STACK)
        return value

    def job_queue_url(self, job: str) -> str | None:
        """The task queue of `job` (None when the stack predates the job: redeploy)."""
        url = self.json_output("JobQueueUrls").get(job)
        return str(url) if url else None


def _local_deployment() -> Deployment:
    from microprocess.local import NoLocalStack, Workspace, read_live_state

    ws = Workspace.discover()
    try:
        state = read_live_state(ws.state_file)
    except NoLocalStack as exc:
        fail(str(exc), EXIT_NO_STACK)
    return Deployment(
        name="local",
        outputs=state.outputs,
        client=lambda service: state.client(service, max_pool_connections=20),
        endpoint_url=state.endpoint_url,
        logs_hint=f"see {ws.logs}/ministack.log",
    )


def _aws_deployment() -> Deployment:
    session = boto3.session.Session()
    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    try:
        stacks = session.client("cloudformation", config=config).describe_stacks(StackName=CLOUD_STACK)["Stacks"]
    except NoCredentialsError:
        fail("no AWS credentials found; configure a profile (AWS_PROFILE) or use the local stack (--target local)", 3)
    except ClientError as exc:
        if "does not exist" in str(exc):
            fail(f"stack {CLOUD_STACK} is not deployed in {session.region_name}; deploy it with `cdk deploy`", 3)
        fail(f"cannot read stack {CLOUD_STACK}: {exc}", EXIT_NO_STACK)
    except BotoCoreError as exc:
        fail(f"cannot reach AWS: {exc}", EXIT_NO_STACK)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    return Deployment(
        name=f"AWS ({CLOUD_STACK}, {session.region_name})",
        outputs=outputs,
        client=lambda service: session.client(service, config=config),
        logs_hint="see the function's CloudWatch Logs",
    )


def connect(target: Target) -> Deployment:
    """The deployment for `target` (tests replace this)."""
    return _local_deployment() if target is Target.local else _aws_deployment()


# ----------------------------------------------------------------------------- operations


@contextmanager
def ledger_errors(dep: Deployment) -> Iterator[None]:
    try:
        yield
    except SteerError as exc:
        fail(str(exc), exc.code)
    except RunNotFound as exc:
        fail(f"unknown run: {exc}; list runs with `microprocess runs`")
    except NoCredentialsError:
        fail("no AWS credentials found", EXIT_NO_STACK)
    except ClientError as exc:
        fail(f"the {dep.name} stack refused the request: {exc}")
    except BotoCoreError as exc:
        hint = " Is the local stack still running? (`microprocess local up`)" if dep.endpoint_url else ""
        fail(f"cannot reach the {dep.name} stack: {exc}.{hint}", EXIT_NO_STACK)


def wait_for(dep: Deployment, run_id: str, *, timeout_s: float, show: bool, job: str) -> Progress:
    ledger = dep.ledger()
    try:
        return watch_run(
            ledger,
            run_id,
            sqs=dep.client("sqs"),
            queue_url=dep.job_queue_url(job),
            dlq_url=dep.outputs.get("DeadLetterQueueUrl"),
            reduce_queue_url=dep.outputs.get("ReduceQueueUrl"),
            timeout_s=timeout_s,
            console=err,
            show=show,
        )
    except RunNeverStarted as exc:
        fail(f"{exc}; {dep.logs_hint}")
    except WaitTimeout as exc:
        fail(f"{exc}; follow it with `microprocess status {run_id}`", EXIT_TIMEOUT)
