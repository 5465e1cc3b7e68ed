#!/usr/bin/env python3
"""$project's CDK app: its own stack, with microprocess added as one construct.

    npx cdk synth -c service_urls='{"counter": "https://counter.example.com"}'
    python app.py                        # the same, offline, into cdk.out/

The construct reads microprocess.toml next to this file and ships it with the functions' code
(from the installed `microprocess` package: no checkout needed).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from constructs import Construct
from microprocess.cdk import MicroprocessPlatform, StageSettings
from microprocess.cdk.lambda_function import powertools_layer_arn

HERE = Path(__file__).resolve().parent


class JobsStack(cdk.Stack):
    """The team's stack: microprocess's queues, functions, ledger and reports for its jobs."""

    def __init__(self, scope: Construct, construct_id: str, *, service_urls: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.jobs = MicroprocessPlatform(
            self,
            "Jobs",
            settings=StageSettings(
                repo_root=HERE,
                ses_sender="reports@example.com",
                layer_arns=(powertools_layer_arn(self.region),),
            ),
            declarations=HERE / "microprocess.toml",
            service_urls=service_urls,
        )
        for key, value in self.jobs.outputs.items():
            cdk.CfnOutput(self, key, value=value)


def create_app(*, outdir: str | None = None, context: Mapping[str, Any] | None = None) -> cdk.App:
    # The CLI passes cdk.json's context (the feature flags) itself; `python app.py` reads it here.
    flags = json.loads((HERE / "cdk.json").read_text())["context"]
    app = cdk.App(outdir=outdir or str(HERE / "cdk.out"), context={**flags, **(context or {})})
    urls = app.node.try_get_context("service_urls") or "{}"
    JobsStack(
        app,
        "$stack",
        service_urls=json.loads(urls) if isinstance(urls, str) else urls,
        env=cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region="eu-west-1"),
    )
    return app


if __name__ == "__main__":
    create_app().synth()
