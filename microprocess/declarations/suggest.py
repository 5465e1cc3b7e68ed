""" "did you mean ...": the closest declared field name to a misspelt one (difflib), for the
error of a declaration with a field its model does not have."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence

from pydantic import BaseModel


def model_at(model: type[BaseModel], path: Sequence[str | int]) -> type[BaseModel] | None:
    """The model that holds the field at `path` (e.g. `source.page_sise` → `ItemSource`)."""
    current: type[BaseModel] = model
    for part in path:
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        nested = _model_in(field.annotation)
        if nested is None:
            return None
        current = nested
    return current


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def did_you_mean(model: type[BaseModel], loc: Sequence[str | int]) -> str:
    """For an unknown field at `loc`: `did you mean 'x'?` (the closest field of its model), else
    the model's fields; empty when the model at `loc` cannot be found."""
    holder = model_at(model, loc[:-1])
    if holder is None:
        return ""
    names = [n for n in holder.model_fields if n != "name"]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return f"the fields are {', '.join(names)}"
