"""The declaration file's reference, generated from the models themselves (so it cannot go stale).

`python -m microprocess.declarations.reference docs/declarations.md` writes every field a
`microprocess.toml` may set: `[services.<name>]`, `[jobs.<name>]` and a job's `source`, with
its type, limits, default and meaning (the model's docstring, `Attributes:`). `--check` only
compares (exit 1 and the fix when it differs). `make docs` runs the first, the tests the second.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from microprocess.declarations.loading import LocalDefaults
from microprocess.declarations.models import ItemSource, JobDeclaration
from microprocess.declarations.services import ServiceCapacity, ServiceDeclaration, TableDeclaration

#: The tables of the file, in order: (heading, model, what it is).
SECTIONS: tuple[tuple[str, type[BaseModel], str], ...] = (
    ("[services.NAME]", ServiceDeclaration, "a service that jobs push to; `NAME` is its name"),
    ("capacity = { ... }", ServiceCapacity, "what a service takes from all its jobs together (docs/capacity.md)"),
    ("[tables.NAME]", TableDeclaration, "a DynamoDB table the stack creates as a job's source; `NAME` is its role"),
    ("[jobs.NAME]", JobDeclaration, "a background job; `NAME` is its name"),
    ("source = { ... }", ItemSource, "a job's item source, an inline table of the job"),
)
_FIELD = re.compile(r"^(\s+)([a-z_][a-z0-9_]*): (.*)$")


class UndocumentedField(ValueError):
    """A declared field without a line in its model's `Attributes:` docstring."""


def field_docs(model: type) -> dict[str, str]:
    """Each field's meaning, from the model docstring's `Attributes:` section (continuation
    lines joined)."""
    doc = model.__doc__ or ""
    lines = doc.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return {}
    found: dict[str, str] = {}
    current: str | None = None
    indent: int | None = None
    for line in lines[start + 1 :]:
        if not line.strip():
            current = None
            continue
        m = _FIELD.match(line)
        if m and (indent is None or len(m[1]) == indent):
            indent = len(m[1])
            current = m[2]
            found[current] = m[3].strip()
        elif current is not None and indent is not None and len(line) - len(line.lstrip()) > indent:
            found[current] += " " + line.strip()
        else:
            break
    return found


def _type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_type(a) for a in inner)
    if origin in (tuple, list):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return "table" if not args else f"table of {_type(args[1])}"
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return " / ".join(f'"{m.value}"' for m in annotation)
        if issubclass(annotation, BaseModel):
            return "inline table (below)"
        return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(annotation, annotation.__name__)
    return str(annotation)


#: The constraint objects pydantic keeps in a field's metadata (`Field(ge=1)` is one with `ge`),
#: by attribute, and how each reads.
_CONSTRAINTS = (
    ("ge", ">= {:,}"),
    ("gt", "> {:,}"),
    ("le", "<= {:,}"),
    ("lt", "< {:,}"),
    ("min_length", "at least {} long"),
    ("max_length", "at most {} long"),
)


def _limits(metadata: list[Any]) -> str:
    parts = []
    for m in metadata:
        for attribute, text in _CONSTRAINTS:
            value = getattr(m, attribute, None)
            if value is not None:
                parts.append(text.format(value))
    return ", ".join(parts)


def _default(field: Any, name: str) -> str:
    if name == "name":
        return "the table's key"
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(none)"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, (tuple, list)):
        return "`[]`" if not value else f"`{list(value)}`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value:,}`" if isinstance(value, int) else f"`{value}`"


def table(model: type[BaseModel]) -> str:
    """The markdown table of `model`'s fields; raises `UndocumentedField` for a field its
    docstring does not explain."""
    docs = field_docs(model)
    missing = [name for name in model.model_fields if name not in docs]
    if missing:
        raise UndocumentedField(
            f"{model.__name__}: fields {missing} have no line in its docstring's `Attributes:` section; add one "
            "(`name: what it means`), then run `make docs`"
        )
    lines = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        kind = _type(field.annotation)
        limits = _limits(field.metadata)
        kind = f"{kind} ({limits})" if limits else kind
        meaning = docs[name].replace("|", "/")
        lines.append(f"| `{name}` | {kind.replace('|', '/')} | {_default(field, name)} | {meaning} |")
    return "\n".join(lines)


def reference() -> str:
    """The whole reference document."""
    parts = [
        "# The declaration file: every field",
        "",
        "<!-- Generated from microprocess/declarations by `make docs` "
        "(python -m microprocess.declarations.reference docs/declarations.md); do not edit by hand. -->",
        "",
        "Jobs and the services they push to are declared in `microprocess.toml` at the root of the",
        "project. The CDK app, the functions, the CLI and the local stack all read it. A wrong value",
        "is refused when the file is loaded, with the file, the job or service, the field and the fix.",
        'The README\'s "Your own job" shows a whole example; `microprocess.toml` holds two more.',
    ]
    for heading, model, what in SECTIONS:
        parts += ["", f"## `{heading}`: {what}", "", table(model)]
    local = field_docs(LocalDefaults)
    keys = [f.name for f in dataclasses.fields(LocalDefaults)]
    missing = [k for k in keys if k not in local]
    if missing:
        raise UndocumentedField(f"LocalDefaults: keys {missing} have no line in its docstring's `Attributes:`")
    parts += ["", "## `[local]`: the local stack's defaults", "", "| field | type | meaning |", "| --- | --- | --- |"]
    parts += [f"| `{k}` | string (a declared job) | {local[k]} |" for k in keys]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    paths = [a for a in args if a != "--check"] or ["docs/declarations.md"]
    text = reference()
    status = 0
    for name in paths:
        path = Path(name)
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if check:
            if old != text:
                print(f"{path} is stale: run `make docs`", file=sys.stderr)
                status = 1
        elif old != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
