"""The CLI's reference table, generated from the commands themselves (so the README cannot go stale).

`python -m microprocess.cli.reference README.md` rewrites the table between the markers
`<!-- cli-reference:start -->` and `<!-- cli-reference:end -->`; `--check` only compares
(exit 1 and the fix when they differ). `make docs` runs the first, the test suite the second.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"


# Typer carries its own copy of click: commands and parameters are recognised by shape.
def _usage(command: Any, path: str) -> str:
    parts = [path]
    for param in command.params:
        if param.param_type_name == "argument":
            parts.append(param.metavar or (param.name or "ARG").upper())
    for param in command.params:
        if param.param_type_name != "option" or param.hidden or param.name == "help":
            continue
        flag = max(param.opts, key=len)
        if param.is_flag:
            parts.append(f"[{flag}]")
        else:
            metavar = param.metavar or (param.name or "VALUE").upper()
            repeat = "..." if param.multiple else ""
            parts.append(f"[{flag} {metavar}]{repeat}")
    return " ".join(parts)


def _rows(command: Any, path: str) -> list[tuple[str, str]]:
    if hasattr(command, "commands"):
        rows: list[tuple[str, str]] = []
        for name in sorted(command.commands):
            rows.extend(_rows(command.commands[name], f"{path} {name}"))
        return rows
    first_paragraph = (command.help or "").strip().split("\n\n")[0]
    summary = " ".join(first_paragraph.split()).rstrip(".")
    return [(_usage(command, path), summary)]


def reference_table(app: typer.Typer) -> str:
    """The markdown table of every command: usage (arguments and every option) and what it does."""
    root = typer.main.get_command(app)
    lines = ["| command | what it does |", "| --- | --- |"]
    for usage, summary in _rows(root, "microprocess"):
        lines.append(f"| `{usage.replace('|', '/')}` | {summary.replace('|', '/')} |")
    return "\n".join(lines)


def render(readme: str, table: str) -> str:
    """`readme` with the table between the markers replaced by `table`."""
    if START not in readme or END not in readme:
        raise ValueError(f"the README has no {START} ... {END} markers to hold the CLI reference")
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"] or ["README.md"]
    from microprocess.cli.commands import app

    table = reference_table(app)
    status = 0
    for name in paths:
        path = Path(name)
        old = path.read_text(encoding="utf-8")
        new = render(old, table)
        if check and new != old:
            print(f"{path}: the CLI reference table is out of date; run `make docs`", file=sys.stderr)
            status = 1
        elif not check and new != old:
            path.write_text(new, encoding="utf-8")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
