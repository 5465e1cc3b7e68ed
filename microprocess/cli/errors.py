"""Expected user errors end the CLI with their message and exit code 2, without a traceback.

A bad declaration file, an unknown job or service, a bad start event, plan or price table, a
bad service setting of the local stack: the message already names the file, the field and the
fix, so the traceback (tens of lines of our own frames) only hides it. `microprocess --debug ...`
(or `MICROPROCESS_DEBUG=1`) shows the traceback too. Any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from microprocess.cli.options import EXIT_USAGE
from microprocess.cli.pricing import PriceTableError
from microprocess.cli.timeline import PlanError
from microprocess.control.scale import ScaleError
from microprocess.declarations import JobDeclarationError, UnknownJobError
from microprocess.declarations.services import UnknownServiceError
from microprocess.pipeline.settings import SettingsError
from microprocess.pipeline.start import StartEventError

DEBUG_ENV = "MICROPROCESS_DEBUG"


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types whose message is the whole answer (the local stack's when it is
    installed). infra's EndpointError is raised in the CDK app's own process (`local up`'s deploy),
    not here: that process's output is the deploy's error."""
    found: list[type[BaseException]] = [
        JobDeclarationError,
        UnknownJobError,
        UnknownServiceError,
        SettingsError,
        StartEventError,
        PlanError,
        PriceTableError,
        ScaleError,
    ]
    try:
        from microprocess.local.services import ServiceConfigError
    except ImportError:  # the local stack's extra is not installed: none of its errors can happen
        return tuple(found)
    return (*found, ServiceConfigError)


class DebugFlag:
    """Whether `--debug` was given (set by the app's callback) or MICROPROCESS_DEBUG is on."""

    on = False

    @classmethod
    def active(cls) -> bool:
        return cls.on or os.environ.get(DEBUG_ENV, "") not in ("", "0", "false")


#: The global `--debug` option (the app's one callback, `commands.global_options`).
DebugOption = Annotated[bool, typer.Option("--debug", help="Show the traceback of an error too.")]


def run_cli(app: Callable[[], object], err: Console | None = None) -> None:
    """Run `app`; an expected user error prints `error: <message>` and exits 2 (its traceback
    with --debug)."""
    try:
        app()
    except user_errors() as exc:
        console = err or Console(stderr=True, highlight=False, soft_wrap=True)
        if DebugFlag.active():
            console.print(escape("".join(traceback.format_exception(exc))), end="")
        console.print(f"[red]error:[/] {escape(str(exc))}")
        if not DebugFlag.active():
            console.print("[dim](run with --debug for the traceback)[/]")
        sys.exit(EXIT_USAGE)
