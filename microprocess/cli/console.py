"""`microprocess console`: serve the operator console (see `microprocess.console`)."""

# No `from __future__ import annotations`: Typer reads the option annotations at run time.
from typing import Annotated

import typer

from microprocess.cli import deployment, options
from microprocess.cli.options import Target, TargetOption


def register(app: typer.Typer) -> None:
    """Add `console` to a Typer app."""

    @app.command("console")
    def console_command(
        host: Annotated[
            str,
            typer.Option("--host", help="Address to listen on; beyond loopback only with the login token."),
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: a free one).")] = 8765,
        no_token: Annotated[
            bool,
            typer.Option("--no-token", help="No login token (loopback only): anyone on this machine can steer runs."),
        ] = False,
        interval: Annotated[
            float, typer.Option("--interval", min=0.2, help="Seconds between a run page's live updates.")
        ] = 1.0,
        target: TargetOption = Target.local,
    ) -> None:
        """Serve the operator console: jobs, runs, a run live (progress, charts, phases, failures by error,
        item search, report), and the steer buttons (pause, resume, scale, stop, cancel, retry failed)."""
        from microprocess.cli.control import signals_of
        from microprocess.console import ConsoleHostError, ConsoleServer
        from microprocess.console.live import SIGNALS_EVERY_S

        dep = deployment.connect(target)
        try:
            server = ConsoleServer(
                dep,
                host=host,
                port=port,
                token=not no_token,
                interval_s=interval,
                signals=signals_of(dep, SIGNALS_EVERY_S),
            )
        except ConsoleHostError as exc:
            options.fail(str(exc), options.EXIT_USAGE)
        except OSError as exc:
            options.fail(f"cannot listen on {host}:{port}: {exc}; choose another --port", options.EXIT_USAGE)
        options.out.print(f"console for the {dep.name} stack; open (once, it logs you in):")
        options.out.print(server.login_url, markup=False)
        options.out.print("Ctrl-C stops it.")
        server.run()
