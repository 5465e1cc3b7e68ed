"""`microprocess init [--service fastapi|stdlib] [FOLDER]`: a team's own project in an empty folder.

It writes `microprocess.toml` (one job, one service), the service (FastAPI, or the standard
library's HTTP server started by `local_command`), its test using the service SDK, a CDK
`app.py` using the construct (`microprocess.cdk`), `cdk.json`, a few sample items and a README
of four commands. The files are the package's `project_template/` (package data).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from string import Template
from typing import Annotated

import typer

#: The files every project gets, then the service's own (from `<framework>/`).
COMMON_FILES = ("microprocess.toml", "app.py", "cdk.json", "items.jsonl", "README.md")
SERVICE_FILES = ("service.py", "test_service.py")
#: A folder's entries that do not make it "not empty" (a fresh `git init`, an editor's folder).
IGNORED_ENTRIES = (".git", ".idea", ".vscode")


class Framework(StrEnum):
    fastapi = "fastapi"
    stdlib = "stdlib"


#: How `local up` runs the service, per framework (the `[services.counter]` line).
LOCAL_LINES = {
    Framework.fastapi: 'local_app = "service:app"           # run by `microprocess local up` (uvicorn)',
    Framework.stdlib: 'local_command = "python service.py"  # run by `microprocess local up`, with PORT set',
}
FRAMEWORK_NAMES = {Framework.fastapi: "FastAPI", Framework.stdlib: "the standard library's HTTP server"}


class InitError(ValueError):
    """The folder cannot take a new project; the message says why and what to do."""


@dataclass(frozen=True)
class Project:
    """What `init` writes: the folder, and the names the templates use."""

    folder: Path
    framework: Framework

    @property
    def name(self) -> str:
        """The project's name: the folder's, as letters, digits and '-' (`my-jobs`)."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.folder.name.lower()).strip("-")
        return slug or "my-jobs"

    @property
    def stack(self) -> str:
        """The CDK stack's name (`my-jobs` -> `MyJobs`; it must start with a letter: `2024-jobs` -> `Jobs2024Jobs`)."""
        pascal = "".join(part.capitalize() for part in self.name.split("-"))
        return pascal if pascal[:1].isalpha() else f"Jobs{pascal}"


def _template(relative: str) -> str:
    return (resources.files("microprocess.cli") / "project_template" / relative).read_text(encoding="utf-8")


def render(project: Project) -> dict[str, str]:
    """The files of `project`, {relative path: text}."""
    values = {
        "project": project.name,
        "stack": project.stack,
        "framework": FRAMEWORK_NAMES[project.framework],
        "local_line": LOCAL_LINES[project.framework],
    }
    files = {name: Template(_template(name)).substitute(values) for name in COMMON_FILES if name != "items.jsonl"}
    files["items.jsonl"] = _template("items.jsonl")  # JSON: no substitution
    files.update({name: _template(f"{project.framework.value}/{name}") for name in SERVICE_FILES})
    return files


def write_project(folder: Path, framework: Framework) -> list[Path]:
    """Write a new project into `folder` (created if missing); refuse a folder that holds anything."""
    folder = folder.resolve()
    if folder.exists() and not folder.is_dir():
        raise InitError(f"{folder} is a file: name a new or empty folder, e.g. `microprocess init my-jobs`")
    present = sorted(p.name for p in folder.iterdir() if p.name not in IGNORED_ENTRIES) if folder.exists() else []
    if present:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise InitError(
            f"{folder} is not empty ({shown}): init writes a new project only into an empty folder, so that "
            "it overwrites nothing. Name a new folder (`microprocess init my-jobs`) or empty this one."
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(Project(folder, framework)).items():
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def register(app: typer.Typer) -> None:
    """Add the `init` command to a Typer app (the CLI wires it with one line)."""

    @app.command("init")
    def init_command(
        folder: Annotated[Path, typer.Argument(help="An empty (or new) folder for the project.")] = Path("."),
        service: Annotated[
            Framework,
            typer.Option("--service", help="The service's framework: FastAPI, or the standard library's HTTP server."),
        ] = Framework.fastapi,
    ) -> None:
        """Write a new team project into an empty folder: one job, its service and test, a CDK app, a README."""
        try:
            written = write_project(folder, service)
        except InitError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        for path in written:
            typer.echo(f"wrote {path}")
        typer.echo(f"next: cd {folder} and follow README.md")
