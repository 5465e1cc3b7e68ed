#!/usr/bin/env python3
"""A team's own CDK app that adds microprocess as one construct.

The billing team already has a stack (here: one archive bucket). It adds the platform with
its declaration file and its service's URL; nothing else changes in its app:

    cd examples/team_cdk_app
    npx cdk synth -a "python app.py" -c service_urls='{"billing": "https://billing-queue.prod.example.com"}'

The construct comes from the installed package (`pip install "microprocess[cdk]"`): no
checkout of microprocess on the path. `microprocess init` writes a project like this one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_s3 as s3
from constructs import Construct
from microprocess.cdk import MicroprocessPlatform, StageSettings
from microprocess.cdk.lambda_function import powertools_layer_arn

HERE = Path(__file__).resolve().parent


class BillingStack(cdk.Stack):
    """The team's stack: what it already had, plus microprocess."""

    def __init__(self, scope: Construct, construct_id: str, *, service_urls: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        # What the team already had.
        self.archive = s3.Bucket(
            self,
            "InvoiceArchive",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
        )
        # microprocess: the jobs of jobs.toml, pushing to the team's own service.
        self.jobs = MicroprocessPlatform(
            self,
            "Jobs",
            settings=StageSettings(
                repo_root=HERE,
                ses_sender="billing-reports@example.com",
                layer_arns=(powertools_layer_arn(self.region),),
                alarm_email="billing-oncall@example.com",
            ),
            declarations=HERE / "jobs.toml",
            service_urls=service_urls,
        )
        for key, value in self.jobs.outputs.items():
            cdk.CfnOutput(self, key, value=value)


def create_app(*, outdir: str | None = None, context: Mapping[str, Any] | None = None) -> cdk.App:
    # The CLI passes cdk.json's context itself; `python app.py` (and the test) read it here.
    flags = json.loads((HERE / "cdk.json").read_text())["context"]
    app = cdk.App(outdir=outdir, context={**flags, **(context or {})})
    urls = app.node.try_get_context("service_urls") or "{}"
    BillingStack(
        app,
        "Billing",
        service_urls=json.loads(urls) if isinstance(urls, str) else urls,
        env=cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region="eu-west-1"),
    )
    return app


if __name__ == "__main__":
    create_app().synth()
