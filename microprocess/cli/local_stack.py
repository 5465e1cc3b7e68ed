"""`microprocess local up|down|status`: the embedded local stack (ministack + the CDK app's local stage)."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.markup import escape

from microprocess.cli import errors
from microprocess.cli.options import EXIT_FAILED, EXIT_NO_STACK, EXIT_USAGE, JsonOption, emit_json, err, fail, out
from microprocess.declarations import JobDeclarationError, get_declarations

local_app = typer.Typer(help="The embedded local stack (ministack + the CDK app's local stage).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the `local` command group to the `microprocess` app."""
    local_app.command("up")(local_up)
    local_app.command("down")(local_down)
    local_app.command("status")(local_status)
    app.add_typer(local_app, name="local")


def workspace() -> Any:
    from microprocess.local import Workspace

    return Workspace.discover()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM both end the foreground command through its cleanup.

    SIGINT is set explicitly: a shell starts background jobs with it ignored."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


ServiceUrlOption = Annotated[
    list[str] | None,
    typer.Option(
        "--service",
        metavar="NAME=URL",
        help="NAME=URL: point the declared service NAME at a process you run (no process is started for it).",
    ),
]


def local_up(
    items: Annotated[
        int | None,
        typer.Option(
            "--items",
            min=0,
            metavar="N",
            help="Items to seed into each declared table with a local_seed (default: its local_items).",
        ),
    ] = None,
    service: ServiceUrlOption = None,
    no_example_service: Annotated[
        bool,
        typer.Option("--no-example-service", help="Start no service process: every service needs --service NAME=URL."),
    ] = False,
    chaos: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, metavar="FILE", help="Fault file for the services and functions."),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Return once the stack is up (stop it with `local down`).")
    ] = False,
    access_log: Annotated[bool, typer.Option("--access-log", help="Log every request the services take.")] = False,
) -> None:
    """Start the local stack: ministack, the deployed local stage, the declared services; seed the tables."""
    from microprocess.local import LocalStack, LocalStackError, StackAlreadyRunning, UpOptions
    from microprocess.local.services import ServiceConfigError, parse_service_urls

    ws = workspace()
    try:
        declarations = get_declarations()
        urls = parse_service_urls(service or [], declarations)
    except (JobDeclarationError, ServiceConfigError) as exc:
        fail(str(exc), EXIT_USAGE)
    stack = LocalStack(ws, echo=lambda line: err.print(escape(line)), declarations=declarations)
    stop_on_signals()
    options = UpOptions(
        items=items, chaos=chaos, access_log=access_log, service_urls=urls, start_examples=not no_example_service
    )
    try:
        state = stack.up(options)
    except (StackAlreadyRunning, ServiceConfigError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        err.print("interrupted; stopped what was started")
        raise typer.Exit(130) from None
    except errors.user_errors() as exc:  # a declaration or endpoint error: bad input
        fail(f"the local stack did not start: {exc}", EXIT_USAGE)
    except Exception as exc:  # every start failure has a message that says what to do
        fail(f"the local stack did not start: {exc}" if not isinstance(exc, LocalStackError) else str(exc))
    out.print(f"local stack up in {stack.timings.line()}")
    out.print(escape(f"endpoint {state.endpoint_url}; services {state.services}; state in {ws.state_file}"))
    if detach:
        out.print("stop it with `microprocess local down`")
        return
    out.print("Ctrl-C stops it.")
    try:
        exited = stack.wait()
        err.print(f"[red]{escape(stack.exited_message(exited))}[/]")
        code = EXIT_FAILED
    except KeyboardInterrupt:
        code = 0
    stack.down()
    raise typer.Exit(code)


def local_down() -> None:
    """Stop the local stack started by `local up` (only the processes it started)."""
    from microprocess.local import LocalStackError, NoLocalStack, stop_recorded

    ws = workspace()
    try:
        stopped = stop_recorded(ws, echo=lambda line: None)
    except NoLocalStack:
        out.print("no local stack is running")
        return
    except LocalStackError as exc:
        fail(str(exc))
    out.print(f"stopped {', '.join(stopped)}" if stopped else "the local stack had already stopped")


def local_status(as_json: JsonOption = False) -> None:
    """Show the running local stack (from local.json)."""
    from microprocess.local import NoLocalStack, read_state

    ws = workspace()
    try:
        state = read_state(ws.state_file)
    except NoLocalStack as exc:
        fail(str(exc), EXIT_NO_STACK)
    running = state.running()
    if as_json:
        emit_json({**state.model_dump(), "running": running})
        return
    out.print(escape(f"endpoint {state.endpoint_url} (region {state.region}); services {state.services}"))
    for name, pid in state.pids.items():
        out.print(f"  {name:<14} pid {pid:<8} {'running' if name in running else '[red]gone[/]'}")
    if len(running) < len(state.pids):
        raise typer.Exit(EXIT_FAILED)
