"""What every `microprocess` command shares: exit codes, the output consoles and helpers, the
`--target`, `--json`, `--wait` and `--timeout` options, and how a run's status is printed.

A command group (`runs`, `report`, `local_stack`, `demo`, `control`, ...) imports from here and
from `deployment`; nothing here imports a command group.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from microprocess.declarations import UnknownJobError, get_declarations
from microprocess.ledger import Progress, RunStatus

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_STACK = 3
EXIT_TIMEOUT = 4


#: The keys of `status --json` (the ledger's progress without its `error`).
STATUS_KEYS = (
    "run_id",
    "job",
    "status",
    "expected",
    "succeeded",
    "failed",
    "pending",
    "split_done",
    "started_at",
    "finished_at",
    "report_uri",
)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Target(StrEnum):
    local = "local"
    aws = "aws"


TargetOption = Annotated[
    Target,
    typer.Option(
        "--target", envvar="MICROPROCESS_TARGET", metavar="local|aws", help="The local stack or the AWS deployment."
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
CombinedOption = Annotated[
    bool, typer.Option("--combined", help="The latest outcome of each item across the run and its retries.")
]
WaitOption = Annotated[bool, typer.Option("--wait", help="Follow the run with a progress bar until it ends.")]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=1, metavar="SECONDS", help="Give up waiting after this many seconds.")
]


def emit_json(value: Any) -> None:
    """One JSON document on one line of stdout (`--json` output is JSON lines)."""
    typer.echo(json.dumps(value, default=str))


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(code)


# ----------------------------------------------------------------------------- deployments


def job_or_fail(job: str) -> str:
    """The declared job's name, or exit 2 naming the declared jobs."""
    try:
        return get_declarations().jobs.get(job).name
    except UnknownJobError as exc:
        fail(str(exc), EXIT_USAGE)


def status_dict(progress: Progress) -> dict[str, Any]:
    full = progress.as_dict()
    return {k: full[k] for k in STATUS_KEYS}


def print_status(progress: Progress) -> None:
    d = progress.as_dict()
    for key in STATUS_KEYS:
        out.print(f"{key:<12} {escape('' if d[key] is None else str(d[key]))}")
    if d.get("error"):
        out.print(f"{'error':<12} [red]{escape(d['error'])}[/]")


def finish_waited(progress: Progress, as_json: bool) -> None:
    if as_json:
        emit_json(status_dict(progress))
    else:
        print_status(progress)
    if progress.status is not RunStatus.SUCCEEDED:
        raise typer.Exit(EXIT_FAILED)
