"""`microprocess --declarations FILE ...`: the one declaration file every command reads.

Found the same way by every command and by what they start (the CDK app `local up` deploys,
the services it runs): `--declarations`, else `MICROPROCESS_DECLARATIONS`, else
`microprocess.toml` in the working directory or a folder above it. The chosen file is written
back to `MICROPROCESS_DECLARATIONS` as an absolute path, so that a process started in another
folder reads the same file; its folder is the project folder (`.microprocess/`, `cdk.out`, the
services' `local_app`/`local_command`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from microprocess.declarations import DECLARATIONS_ENV, find_declarations_file, get_declarations


def choose_declarations(path: Path | None, environ: dict[str, str] | os._Environ[str] = os.environ) -> Path | None:
    """Pin the declaration file for this process and its children: `path`, else the one
    `MICROPROCESS_DECLARATIONS` names (made absolute). Returns the file pinned, or None when
    neither is given (the working directory upward then decides)."""
    if path is None and not environ.get(DECLARATIONS_ENV):
        return None
    chosen = path.resolve() if path is not None else find_declarations_file(environ).resolve()
    environ[DECLARATIONS_ENV] = str(chosen)
    get_declarations.cache_clear()
    return chosen


#: The global `--declarations FILE` option (the app's one callback, `commands.global_options`).
DeclarationsOption = Annotated[
    Path | None,
    typer.Option(
        "--declarations",
        metavar="FILE",
        dir_okay=False,
        help=f"The declaration file (default: ${DECLARATIONS_ENV}, else microprocess.toml in this folder "
        "or one above it). Its folder is the project's: .microprocess/, cdk.out, the services.",
    ),
]
