#!/usr/bin/env python3
"""The microprocess CDK app: the `Microprocess-Cloud` and `Microprocess-Local` stages.

The only place that reads context or the environment. Synthesizes without Docker,
network or credentials:

    .venv/bin/python app.py                       # both stages into cdk.out/
    npx cdk synth -c stage=cloud                  # one stage through the CLI
    npx cdk deploy Microprocess-Cloud -c account=123456789012 -c region=eu-west-1 \
        -c domain=example.com -c hosted_zone_id=Z123 -c certificate_arn=arn:aws:acm:...

Context keys (all optional): stage (cloud|local|all, default all), account, region,
domain, hosted_zone_id, certificate_arn, ses_sender, alarm_email, log_level,
score_work_ms, intermediate_expiry_days, queue_service_url, live_service_url,
local_layer_path, and for the local stage forwarder_max_concurrency,
task_visibility_timeout_s, reduce_visibility_timeout_s. See infra/README.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aws_cdk as cdk

from infra import LocalServiceUrls, MicroprocessStack, StageSettings
from infra.lambda_function import powertools_layer_arn
from infra.nag import add_cloud_checks
from infra.scores_service import DomainSettings
from microprocess.stacks import CLOUD_STACK, LOCAL_STACK

ROOT = Path(__file__).resolve().parent
STAGES = ("cloud", "local", "all")

DEFAULT_ACCOUNT = "000000000000"
DEFAULT_REGION = "us-east-1"
#: The emulator's account: the local stage always deploys there.
LOCAL_ACCOUNT = "000000000000"
DEFAULT_SES_SENDER = "reports@example.com"
DEFAULT_QUEUE_SERVICE_URL = "http://127.0.0.1:8001"
DEFAULT_LIVE_SERVICE_URL = "http://127.0.0.1:8000"
DOMAIN_KEYS = ("domain", "hosted_zone_id", "certificate_arn")


class ContextError(ValueError):
    """A context value that cannot be used; the message names the key and the fix."""


def cdk_json_context() -> dict[str, Any]:
    """The `context` of cdk.json: the CLI passes it itself, `python app.py` does not."""
    path = ROOT / "cdk.json"
    return dict(json.loads(path.read_text()).get("context", {})) if path.is_file() else {}


def _text(app: cdk.App, key: str, default: str = "") -> str:
    value = app.node.try_get_context(key)
    return default if value is None or value == "" else str(value)


def _int(app: cdk.App, key: str, default: int) -> int:
    raw = _text(app, key, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ContextError(f"context '{key}' must be an integer, got {raw!r}") from None


def _domain(app: cdk.App) -> DomainSettings | None:
    given = {key: _text(app, key) for key in DOMAIN_KEYS}
    if not any(given.values()):
        return None
    missing = [key for key, value in given.items() if not value]
    if missing:
        raise ContextError(
            f"context {missing} missing: a domain needs all of {list(DOMAIN_KEYS)} "
            "(e.g. -c domain=example.com -c hosted_zone_id=Z0123 -c certificate_arn=arn:aws:acm:...)"
        )
    return DomainSettings(
        name=given["domain"], hosted_zone_id=given["hosted_zone_id"], certificate_arn=given["certificate_arn"]
    )


def create_app(*, outdir: str, context: dict[str, Any] | None = None) -> tuple[cdk.App, dict[str, MicroprocessStack]]:
    """Build the app and the stages that context `stage` selects; returns (app, stacks by name)."""
    app = cdk.App(
        outdir=outdir,
        context={**cdk_json_context(), **(context or {})},
        # The built-in CloudFormation validation adds ~10 s to every synth; the infra tests run
        # cfn-lint on the templates instead.
        builtin_cloud_formation_validation=False,
    )
    stage = _text(app, "stage", "all")
    if stage not in STAGES:
        raise ContextError(f"context 'stage' must be one of {list(STAGES)}, got {stage!r}")
    region = _text(app, "region", DEFAULT_REGION)
    common: dict[str, Any] = {
        "repo_root": ROOT,
        "ses_sender": _text(app, "ses_sender", DEFAULT_SES_SENDER),
        "log_level": _text(app, "log_level", "INFO").upper(),
        "intermediate_expiry_days": _int(app, "intermediate_expiry_days", 30),
        "score_work_ms": _int(app, "score_work_ms", 0),
    }
    stacks: dict[str, MicroprocessStack] = {}
    if stage in ("cloud", "all"):
        cloud = MicroprocessStack(
            app,
            CLOUD_STACK,
            settings=StageSettings(
                **common,
                layer_arns=(powertools_layer_arn(region),),
                domain=_domain(app),
                alarm_email=_text(app, "alarm_email") or None,
            ),
            env=cdk.Environment(account=_text(app, "account", DEFAULT_ACCOUNT), region=region),
            description="microprocess: pushed background jobs on AWS (Fargate scores services, SQS, Lambda)",
        )
        add_cloud_checks(app, cloud)
        stacks[CLOUD_STACK] = cloud
    if stage in ("local", "all"):
        layer_path = _text(app, "local_layer_path")
        stacks[LOCAL_STACK] = MicroprocessStack(
            app,
            LOCAL_STACK,
            settings=StageSettings(
                **common,
                layer_paths=(Path(layer_path).resolve(),) if layer_path else (),
                forwarder_max_concurrency=_int(app, "forwarder_max_concurrency", 0) or None,
                task_visibility_timeout_s=_int(app, "task_visibility_timeout_s", 0) or None,
                reduce_visibility_timeout_s=_int(app, "reduce_visibility_timeout_s", 0) or None,
                local_services=LocalServiceUrls(
                    queue=_text(app, "queue_service_url", DEFAULT_QUEUE_SERVICE_URL),
                    live=_text(app, "live_service_url", DEFAULT_LIVE_SERVICE_URL),
                ),
            ),
            env=cdk.Environment(account=LOCAL_ACCOUNT, region=region),
            description="microprocess: the local stage, deployed into the embedded emulator",
            # No AWS::CDK::Metadata resource: nothing in the local stage talks to AWS.
            analytics_reporting=False,
        )
    return app, stacks


def main() -> None:
    # The CDK CLI tells the app where to write (--output); run directly, cdk.out/ next to this file.
    app, _ = create_app(outdir=os.environ.get("CDK_OUTDIR") or str(ROOT / "cdk.out"))
    app.synth()


if __name__ == "__main__":
    main()
