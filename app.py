#!/usr/bin/env python3
"""This repository's CDK app: the packaged app (`infra/app.py`, installed as
`microprocess.cdk.app`) with this repository as the project folder.

    .venv/bin/python app.py                       # both stages into cdk.out/
    npx cdk synth -c stage=cloud                  # one stage through the CLI

Context keys and stages: see `infra/app.py` and infra/README.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk

from infra.app import STAGES, ContextError, cdk_json_context, main
from infra.app import create_app as create_project_app
from infra.stack import MicroprocessStack

ROOT = Path(__file__).resolve().parent

__all__ = ["ROOT", "STAGES", "ContextError", "cdk_json_context", "create_app"]


def create_app(*, outdir: str, context: dict[str, Any] | None = None) -> tuple[cdk.App, dict[str, MicroprocessStack]]:
    """The packaged app with this repository as the project folder."""
    return create_project_app(outdir=outdir, context=context, root=ROOT)


if __name__ == "__main__":
    main(ROOT)
