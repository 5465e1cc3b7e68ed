"""What the e2e modules on a real local stack share: one stack per module, the CLI as a user
runs it (its JSON lines), and invoice manifests for the reminders service."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from microprocess.cli import commands as cli
from microprocess.declarations import load_declarations
from microprocess.ledger import Ledger
from microprocess.local import LocalStack, LocalState, UpOptions, Workspace
from microprocess.local.calls import CALL_LOG_ENV
from microprocess.local.workspace import WORKDIR_ENV, project_root


@contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """`name` set to `value` (None: unset) for the block, as it was after."""
    before = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextmanager
def module_stack(
    name: str, options: UpOptions, *, workdir_env: bool = False, declarations_file: Path | None = None
) -> Iterator[LocalStack]:
    """A local stack in its own work folder (`.microprocess/e2e-<name>-<pid>`), stopped and removed
    afterwards. With `workdir_env`, the CLI finds it through the work folder, as a user's shell would.

    With `declarations_file` (a file derived from the repository's, written beside it so that its
    services resolve): the stack is deployed from it and it is removed after. `DECLARATIONS_ENV` is
    left alone: this process reads its declarations once (`get_declarations` is cached), and a
    derived file read there would be deployed by the next module's stack after it was removed. Such
    a stack's functions are not the repository's deployment: their AWS calls are not recorded for
    the cloud-roles check (`test_local_e2e_calls`)."""
    ws = Workspace.discover(project_root() / ".microprocess" / f"e2e-{name}-{os.getpid()}")
    ws.create()
    declared = load_declarations(declarations_file) if declarations_file is not None else None
    stack = LocalStack(ws, echo=lambda line: None, declarations=declared)
    try:
        with _env(CALL_LOG_ENV, None) if declarations_file is not None else nullcontext():
            stack.up(options)
        with _env(WORKDIR_ENV, str(ws.workdir)) if workdir_env else nullcontext():
            yield stack
    finally:
        stack.down()
        shutil.rmtree(ws.workdir, ignore_errors=True)
        if declarations_file is not None:
            declarations_file.unlink(missing_ok=True)


def stack_state(stack: LocalStack) -> LocalState:
    assert stack.state is not None, "the stack is not up"
    return stack.state


def stack_ledger(state: LocalState) -> Ledger:
    return Ledger(state.outputs["LedgerTable"], client=state.client("dynamodb"))


def cli_run(*args: str, code: int = 0) -> str:
    """The CLI's standard output; its exit code must be `code`."""
    result = CliRunner().invoke(cli.app, list(args), catch_exceptions=False)
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def cli_json(*args: str, code: int = 0) -> list[Any]:
    """The CLI's JSON lines (`--json`), parsed."""
    return [json.loads(line) for line in cli_run(*args, code=code).strip().splitlines() if line.strip()]


def invoices_file(
    path: Path, n: int, *, first: int = 1, not_overdue: frozenset[int] = frozenset(), amount: float | None = None
) -> Path:
    """`n` invoices as JSONL, ids INV-<first>...; those at the positions `not_overdue` are due next
    month (the reminders service refuses them: a permanent 4xx), the others ten days overdue.
    `amount`: every invoice's amount (default 10 + its number)."""
    overdue = (date.today() - timedelta(days=10)).isoformat()
    future = (date.today() + timedelta(days=30)).isoformat()
    with path.open("w") as f:
        for k, i in enumerate(range(first, first + n)):
            due = future if k in not_overdue else overdue
            value = amount if amount is not None else 10.0 + i
            f.write(json.dumps({"invoice_id": f"INV-{i:05d}", "customer": f"C{i}", "amount": value, "due_date": due}))
            f.write("\n")
    return path


def chaos_stats(state: LocalState, service: str = "scores") -> dict[str, Any]:
    """What the service's chaos middleware injected (`GET /_chaos/stats`, microservice/chaos.py)."""
    with urllib.request.urlopen(f"{state.services[service]}/_chaos/stats", timeout=5) as resp:
        return dict(json.loads(resp.read()))
