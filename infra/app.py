"""The microprocess CDK app: the `Microprocess-Cloud` and `Microprocess-Local` stages.

In the installed package as `python -m microprocess.cdk.app` (what `microprocess local up`
deploys); the repository's `app.py` runs it with the repository as the project folder. The
project folder (default: the working directory) holds `cdk.json` and what context
`declarations` names relative paths to. The only place that reads context or the
environment. Synthesizes without Docker, network or credentials:

    .venv/bin/python app.py                       # both stages into cdk.out/
    npx cdk synth -c stage=cloud                  # one stage through the CLI
    npx cdk deploy Microprocess-Cloud -c account=123456789012 -c region=eu-west-1 \
        -c domain=example.com -c hosted_zone_id=Z123 -c certificate_arn=arn:aws:acm:...

Plain HTTP: a cloud stage for a real account (`-c account=...`) with a bundled service
needs a domain (HTTPS) or `-c allow_plain_http=true`; the placeholder account (synth only,
never deployable) synthesizes plain-HTTP listeners so that `make synth` needs no context.

Context keys (all optional): stage (cloud|local|all, default all), declarations (the
declaration file; default: the one the CLI reads, `find_declarations_file`), service_urls (JSON {"<service>": "<url>"}),
account, region, domain, hosted_zone_id, certificate_arn, vpc_id, subnet_ids,
security_group_id, allow_plain_http, service_docs, trace_forwarder, ses_sender, alarm_email, log_level, score_work_ms,
intermediate_expiry_days, local_layer_path, and for the local stage
forwarder_max_concurrency, task_visibility_timeout_s, reduce_visibility_timeout_s,
sweeper_rate_minutes, stuck_after_s, max_queue_depth_cap.
See infra/README.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aws_cdk as cdk

from microprocess.declarations import Declarations, find_declarations_file, load_declarations
from microprocess.stacks import CLOUD_STACK, LOCAL_STACK

from .bundled_service import DomainSettings
from .endpoints import EndpointError, parse_service_urls
from .lambda_function import powertools_layer_arn
from .nag import add_cloud_checks
from .platform import StageSettings, VpcAttachment
from .stack import MicroprocessStack

#: The CDK feature flags the app is written for (a project's `cdk.json` may add to them).
FEATURE_FLAGS = {
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
    "@aws-cdk/aws-lambda:recognizeLayerVersion": True,
    "@aws-cdk/core:checkSecretUsage": True,
}
STAGES = ("cloud", "local", "all")

DEFAULT_ACCOUNT = "000000000000"
DEFAULT_REGION = "us-east-1"
#: The emulator's account: the local stage always deploys there.
LOCAL_ACCOUNT = "000000000000"
DEFAULT_SES_SENDER = "reports@example.com"
DOMAIN_KEYS = ("domain", "hosted_zone_id", "certificate_arn")
#: Context keys that no longer exist, and what replaced them.
REPLACED_KEYS = {
    "queue_service_url": 'service_urls=\'{"<service>": "<url>"}\'',
    "live_service_url": 'service_urls=\'{"<service>": "<url>"}\' (the queue endpoint of each service)',
}


class ContextError(ValueError):
    """A context value that cannot be used; the message names the key and the fix."""


def cdk_json_context(root: Path) -> dict[str, Any]:
    """The `context` of `root/cdk.json`: the CLI passes it itself, `python app.py` does not."""
    path = root / "cdk.json"
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


def _bool(app: cdk.App, key: str) -> bool:
    raw = _text(app, key, "false").lower()
    if raw not in ("true", "false"):
        raise ContextError(f"context '{key}' must be true or false, got {raw!r}")
    return raw == "true"


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


def _vpc(app: cdk.App) -> VpcAttachment | None:
    vpc_id, subnets = _text(app, "vpc_id"), _text(app, "subnet_ids")
    if not vpc_id and not subnets:
        return None
    if not (vpc_id and subnets):
        raise ContextError(
            "context 'vpc_id' and 'subnet_ids' go together: -c vpc_id=vpc-0123 -c subnet_ids=subnet-1,subnet-2 "
            "(and optionally -c security_group_id=sg-0123)"
        )
    try:
        return VpcAttachment(
            vpc_id=vpc_id,
            subnet_ids=tuple(s.strip() for s in subnets.split(",") if s.strip()),
            security_group_id=_text(app, "security_group_id") or None,
        )
    except ValueError as exc:
        raise ContextError(f"context vpc_id/subnet_ids/security_group_id: {exc}") from None


def _service_urls(app: cdk.App) -> dict[str, str]:
    try:
        return parse_service_urls(app.node.try_get_context("service_urls"))
    except (EndpointError, json.JSONDecodeError) as exc:
        raise ContextError(f'context \'service_urls\' must be a JSON object {{"<service>": "<url>"}}: {exc}') from None


def _declarations(app: cdk.App, root: Path) -> Declarations:
    """Context `declarations` (relative to the project folder), else the file every command of the
    CLI reads (`find_declarations_file`: `MICROPROCESS_DECLARATIONS`, else the folders upward)."""
    named = _text(app, "declarations")
    if not named:
        return load_declarations(find_declarations_file())
    path = Path(named)
    return load_declarations(path if path.is_absolute() else root / path)


def _offline_availability_zones(app: cdk.App, account: str, region: str) -> None:
    """Give the VPC its availability zones from context, so that a synth for any account needs
    no network or credentials (no zone lookup): `-c availability_zones=eu-west-1a,eu-west-1b`,
    else what cdk.json holds for the account and region, else the region's zones `a` and `b`."""
    key = f"availability-zones:account={account}:region={region}"
    if app.node.try_get_context(key):
        return
    given = _text(app, "availability_zones")
    zones = [z.strip() for z in given.split(",") if z.strip()] if given else [f"{region}a", f"{region}b"]
    if len(zones) < 2 or not all(z.startswith(region) for z in zones):
        raise ContextError(
            f"context 'availability_zones' must name at least two zones of {region}, e.g. {region}a,{region}b "
            f"(got {given!r})"
        )
    app.node.set_context(key, zones)


def create_app(
    *, outdir: str, context: dict[str, Any] | None = None, root: Path | None = None
) -> tuple[cdk.App, dict[str, MicroprocessStack]]:
    """Build the app and the stages that context `stage` selects; returns (app, stacks by name).

    `root`: the project folder (default: the working directory)."""
    root = (root or Path.cwd()).resolve()
    app = cdk.App(
        outdir=outdir,
        context={**FEATURE_FLAGS, **cdk_json_context(root), **(context or {})},
        # The built-in CloudFormation validation adds ~10 s to every synth; the infra tests run
        # cfn-lint on the templates instead.
        builtin_cloud_formation_validation=False,
    )
    stage = _text(app, "stage", "all")
    if stage not in STAGES:
        raise ContextError(f"context 'stage' must be one of {list(STAGES)}, got {stage!r}")
    for key, replacement in REPLACED_KEYS.items():
        if _text(app, key):
            raise ContextError(f"context '{key}' is gone: pass {replacement}")
    region = _text(app, "region", DEFAULT_REGION)
    declarations = _declarations(app, root)
    service_urls = _service_urls(app)
    common: dict[str, Any] = {
        "repo_root": root,
        "ses_sender": _text(app, "ses_sender", DEFAULT_SES_SENDER),
        "log_level": _text(app, "log_level", "INFO").upper(),
        "intermediate_expiry_days": _int(app, "intermediate_expiry_days", 30),
        "score_work_ms": _int(app, "score_work_ms", 0),
    }
    stacks: dict[str, MicroprocessStack] = {}
    if stage in ("cloud", "all"):
        account = _text(app, "account", DEFAULT_ACCOUNT)
        _offline_availability_zones(app, account, region)
        cloud = MicroprocessStack(
            app,
            CLOUD_STACK,
            settings=StageSettings(
                **common,
                layer_arns=(powertools_layer_arn(region),),
                domain=_domain(app),
                # 000000000000 is no real account: a synth-only stage may show its listeners as they are.
                allow_plain_http=account == DEFAULT_ACCOUNT or _text(app, "allow_plain_http") == "true",
                vpc=_vpc(app),
                alarm_email=_text(app, "alarm_email") or None,
                service_docs=_bool(app, "service_docs"),
                trace_forwarder=_bool(app, "trace_forwarder"),
            ),
            declarations=declarations,
            service_urls=service_urls,
            env=cdk.Environment(account=account, region=region),
            description="microprocess: background jobs pushed to services (SQS, Lambda, DynamoDB; bundled: Fargate)",
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
                local=True,
                layer_paths=(Path(layer_path).resolve(),) if layer_path else (),
                forwarder_max_concurrency=_int(app, "forwarder_max_concurrency", 0) or None,
                sweeper_rate_minutes=_int(app, "sweeper_rate_minutes", 0) or None,
                stuck_after_s=_int(app, "stuck_after_s", 0) or None,
                max_queue_depth_cap=_int(app, "max_queue_depth_cap", 0) or None,
                task_visibility_timeout_s=_int(app, "task_visibility_timeout_s", 0) or None,
                reduce_visibility_timeout_s=_int(app, "reduce_visibility_timeout_s", 0) or None,
            ),
            declarations=declarations,
            service_urls=service_urls,
            env=cdk.Environment(account=LOCAL_ACCOUNT, region=region),
            description="microprocess: the local stage, deployed into the embedded emulator",
            # No AWS::CDK::Metadata resource: nothing in the local stage talks to AWS.
            analytics_reporting=False,
        )
    return app, stacks


def main(root: Path | None = None) -> None:
    # The CDK CLI tells the app where to write (--output); run directly, cdk.out/ in the project folder.
    root = (root or Path.cwd()).resolve()
    app, _ = create_app(outdir=os.environ.get("CDK_OUTDIR") or str(root / "cdk.out"), root=root)
    app.synth()


if __name__ == "__main__":
    main()
