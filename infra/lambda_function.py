"""One Python Lambda function of microprocess: code, layers, its own role and log group.

The code is one asset for all functions (the handlers, the `microprocess` package and the
declaration file, staged without Docker); the handler names the entry point. The log group is an
ordinary resource with a retention (no log-retention custom resource), and the role starts
empty: it may write to that log group and nothing else until a `grant_*` adds access.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

import microprocess
from microprocess.stacks import LAMBDA_ARCHITECTURE

from .contract import DECLARATIONS_FILE, POWERTOOLS_TRACE_DISABLED
from .nag import acknowledge, skip_checkov

RUNTIME = lambda_.Runtime.PYTHON_3_11
#: The cloud stage's architecture (`LAMBDA_ARCHITECTURE`: the price the planner uses follows it).
CLOUD_ARCHITECTURE = {"arm64": lambda_.Architecture.ARM_64, "x86_64": lambda_.Architecture.X86_64}[LAMBDA_ARCHITECTURE]
#: Version of the AWS-published layer `AWSLambdaPowertoolsPythonV3-python311-<architecture>`: the
#: newest one confirmed offline (the Powertools docs); it may trail the pinned 3.37.0.
#: Check with `aws lambda list-layer-versions` before a deploy and move it with the pin.
POWERTOOLS_LAYER_VERSION = 27
POWERTOOLS_LAYER_ACCOUNT = "017000801446"

#: The code asset is an allow-list: the handlers (as `functions/`) and the `microprocess` package
#: (plus the declaration file, staged as `microprocess.toml` at the root).
CODE_FOLDERS = ("functions", "microprocess")
#: Never packaged: caches, and the embedded local stack (a laptop tool, not Lambda code); in the
#: installed package also the CDK construct and the handlers (staged as `functions/`).
CODE_EXCLUDED = ("__pycache__", "*.pyc", ".*")
CODE_EXCLUDED_PATHS = ("microprocess/local", "microprocess/cdk", "microprocess/functions")


def code_sources() -> dict[str, Path]:
    """Where each folder of the code asset comes from, {asset folder: source folder}: the same
    in this repository (`functions/` beside `infra/`) and in the installed package
    (`microprocess/functions/` beside `microprocess/cdk/`), so a team's CDK app needs no checkout."""
    return {
        "functions": Path(__file__).resolve().parent.parent / "functions",
        "microprocess": Path(microprocess.__file__).resolve().parent,
    }


def powertools_layer_arn(region: str, version: int = POWERTOOLS_LAYER_VERSION) -> str:
    """The ARN of the AWS-published Powertools for AWS Lambda (Python) v3 layer (3.11, the cloud
    stage's architecture: the layer holds compiled dependencies, such as pydantic-core)."""
    return (
        f"arn:aws:lambda:{region}:{POWERTOOLS_LAYER_ACCOUNT}:layer:"
        f"AWSLambdaPowertoolsPythonV3-python311-{LAMBDA_ARCHITECTURE}:{version}"
    )


def stage_code(declarations_file: Path, staging: Path) -> Path:
    """Copy the handlers and the `microprocess` package (`code_sources()`), and `declarations_file`
    as `microprocess.toml`, into `staging`; returns `staging`.

    Staging (rather than an exclude list over a folder) lets the declaration file live anywhere
    (a team's own repository) and keeps everything else out of the package.
    """
    sources = code_sources()
    for folder in CODE_FOLDERS:
        if not (sources[folder] / "__init__.py").is_file():
            raise FileNotFoundError(f"{sources[folder]} is not a Python package: the Lambda code asset needs it")
    if not declarations_file.is_file():
        raise FileNotFoundError(f"declaration file {declarations_file} does not exist: the functions read it")
    ignore = shutil.ignore_patterns(*CODE_EXCLUDED)
    for folder in CODE_FOLDERS:
        shutil.copytree(sources[folder], staging / folder, ignore=ignore, dirs_exist_ok=True)
    for path in CODE_EXCLUDED_PATHS:
        shutil.rmtree(staging / path, ignore_errors=True)
    shutil.copyfile(declarations_file, staging / DECLARATIONS_FILE)
    return staging


def code_asset(declarations_file: Path) -> lambda_.Code:
    """The functions' code: the handlers and the `microprocess` package, and the declaration file
    as `microprocess.toml` at the root.

    Staged into a fresh folder at synth time (no Docker); the asset hash is the content's, so
    an unchanged tree is never re-uploaded.
    """
    staging = Path(tempfile.mkdtemp(prefix="microprocess-code-"))
    # CDK copies the asset into the cloud assembly when the function binds it, within this process.
    atexit.register(shutil.rmtree, staging, ignore_errors=True)
    stage_code(declarations_file, staging)
    return lambda_.Code.from_asset(str(staging))


@dataclass(frozen=True)
class FunctionDefaults:
    """What every microprocess function of one stage shares.

    Attributes:
        code: the shared code asset (`code_asset(declarations_file)`).
        layers: layers to attach to every function.
        environment: variables every function gets (service name, metrics namespace, log level).
        tracing: X-Ray active tracing.
        architecture: the functions' instruction set (cloud: `CLOUD_ARCHITECTURE`; local: the
            host's, left unset).
        log_retention: how long the functions' log groups keep events.
        removal_policy: for the log groups.
    """

    code: lambda_.Code
    layers: Sequence[lambda_.ILayerVersion] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    tracing: bool = False
    architecture: lambda_.Architecture | None = None
    log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH
    removal_policy: RemovalPolicy = RemovalPolicy.DESTROY


class MicroprocessFunction(Construct):
    """A Python 3.11 function running `functions.<name>.handler.lambda_handler`.

    Args:
        name: the folder under `functions/` (e.g. `forwarder`).
        defaults: code, layers, shared environment, tracing and log settings of the stage.
        environment: this function's own variables (added to `defaults.environment`).
        timeout: function timeout.
        memory_size: memory, MiB.
        description: shown in the console.
        vpc, vpc_subnets, security_groups: put the function in a VPC (optional).
        tracing: X-Ray active tracing for this function (default: the stage's,
            `defaults.tracing`); off, its Powertools Tracer is disabled too.

    Attributes:
        function: the `lambda_.Function`.
        role: its execution role (starts with log access only).
        log_group: its log group.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        name: str,
        defaults: FunctionDefaults,
        environment: Mapping[str, str],
        timeout: Duration,
        memory_size: int = 256,
        description: str = "",
        vpc: ec2.IVpc | None = None,
        vpc_subnets: ec2.SubnetSelection | None = None,
        security_groups: Sequence[ec2.ISecurityGroup] | None = None,
        tracing: bool | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        traced = defaults.tracing if tracing is None else tracing
        self.log_group = logs.LogGroup(
            self, "Logs", retention=defaults.log_retention, removal_policy=defaults.removal_policy
        )
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"microprocess {name} function",
        )
        self.log_group.grant_write(self.role)
        if vpc is not None:
            # A role passed to a function in a VPC does not get the ENI permissions by itself.
            self.role.add_managed_policy(
                iam.ManagedPolicy.from_aws_managed_policy_name("service-role/AWSLambdaVPCAccessExecutionRole")
            )
            acknowledge(
                self.role,
                "The AWS-managed VPC access policy holds only the ENI actions Lambda needs in a VPC; "
                "those actions support no resource-level scoping, so a custom policy would be the same.",
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]",
            )
        if traced:
            acknowledge(
                self.role,
                "X-Ray's PutTraceSegments and PutTelemetryRecords support no resource-level permissions.",
                "AwsSolutions-IAM5[Resource::*]",
            )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            handler=f"functions.{name}.handler.lambda_handler",
            code=defaults.code,
            layers=list(defaults.layers),
            environment={
                **defaults.environment,
                **environment,
                **({} if traced else {POWERTOOLS_TRACE_DISABLED: "true"}),
            },
            timeout=timeout,
            memory_size=memory_size,
            description=description,
            role=self.role,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE if traced else lambda_.Tracing.DISABLED,
            architecture=defaults.architecture,
            vpc=vpc,
            vpc_subnets=vpc_subnets,
            security_groups=list(security_groups) if security_groups else None,
        )
        skip_checkov(
            self.log_group,
            "CloudWatch Logs encrypts every log group at rest with its service keys; the function logs names, "
            "ids and errors, no secrets, and a customer-managed key would add a key policy for the logs "
            "service without narrowing who may read (IAM does).",
            "CKV_AWS_158",
        )
        skip_checkov(
            self.function,
            "The variables are resource names, URLs and tuning values, no secrets (a signing key goes by its "
            "Secrets Manager ARN); Lambda encrypts them at rest with its service key.",
            "CKV_AWS_173",
        )
        acknowledge(
            self.function,
            "Python 3.11 on purpose: the project, its pinned dependencies and the Powertools layer "
            "(python311) move to a newer runtime together, in one change.",
            "AwsSolutions-L1",
        )
