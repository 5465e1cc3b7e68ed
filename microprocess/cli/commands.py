"""`microprocess`: start, watch, cancel and retry runs; run the embedded local stack.

Against the local stack by default (its endpoint and stack outputs come from
`.microprocess/local.json`), or AWS with `--target aws` (the `Microprocess-Cloud`
stack's outputs, read with CloudFormation).

Exit codes: 0 done (a waited run SUCCEEDED); 1 the operation failed or the run did not
succeed; 2 bad input (unknown job, bad option); 3 no local stack / no deployed stack;
4 `--wait` timed out.

This module only assembles the app: each command group lives in its own module and adds its
commands with `register(app)`; what they share (options, output, the deployment) is in
`options` and `deployment`. A new command group: a module with `register(app)`, one line below.
"""

from __future__ import annotations

import typer

from microprocess.cli import (
    check_service,
    console,
    control,
    demo,
    errors,
    init,
    local_stack,
    plan,
    project,
    report,
    runs,
    services,
)
from microprocess.cli.demo import count_report_rows

# Re-exported for the tests and tools that read them here (their homes: options, deployment, runs, ...).
from microprocess.cli.deployment import Deployment, connect
from microprocess.cli.options import EXIT_FAILED, EXIT_NO_STACK, EXIT_TIMEOUT, EXIT_USAGE, Target, err, fail, out
from microprocess.cli.report import download_report, report_keys
from microprocess.cli.runs import status
from microprocess.stacks import CLOUD_STACK

__all__ = [
    "CLOUD_STACK",
    "EXIT_FAILED",
    "EXIT_NO_STACK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "Deployment",
    "Target",
    "app",
    "connect",
    "count_report_rows",
    "download_report",
    "fail",
    "main",
    "out",
    "report_keys",
    "status",
]

app = typer.Typer(
    name="microprocess",
    help="Run background jobs as millions of small pushed tasks, on AWS or on this laptop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def global_options(declarations: project.DeclarationsOption = None, debug: errors.DebugOption = False) -> None:
    """The options every command takes: the declaration file, and tracebacks on errors."""
    errors.DebugFlag.on = debug
    project.choose_declarations(declarations)


init.register(app)  # init: a team's own project
local_stack.register(app)  # local up|down|status
plan.register(app)  # plan
check_service.register(app)  # check-service
runs.register(app)  # run, status, runs, cancel, retry-failed
report.register(app)  # report
services.register(app)  # services: each service's load
demo.register(app)  # demo
control.register(app)  # tasks, pause, resume, stop, scale
console.register(app)  # the operator console


def main() -> None:
    errors.run_cli(app, err)


if __name__ == "__main__":
    main()
