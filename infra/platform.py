"""The microprocess platform as one construct: what a stack (ours, or a team's own) adds.

It composes the constructs for one stage, cloud or local, from a declaration file:

* per job: a task queue and an event source on the one task forwarder function (the job's
  batch size and concurrency cap), a schedule rule, dashboard widgets and alarms (cloud);
* per table role: an on-demand source table;
* per service: a signing secret, and, for a `bundled` service in the cloud, its two Fargate
  services behind two load balancers in a VPC. A service with a URL (declared, or given in
  `service_urls`) is an external endpoint: the stage builds nothing for it. A stage whose
  services are all external has no VPC, Fargate service, load balancer or NAT gateway, unless
  `vpc` puts the pushers in the team's own VPC.
* shared: the ledger, the reduce queue and its reducer, the DLQ and its function, the
  splitter, the sweeper, the reports bucket and the SES identity.

The local stage (`settings.local`) is the same serverless core pointed at locally run
services; no VPC, Fargate, ALB, monitoring or custom resources (the emulator runs none).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aws_cdk import Annotations, Duration, FeatureFlags, RemovalPolicy, Stack, Tags
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from microprocess.control.scheduled import controlled_jobs
from microprocess.control.share import shared_services
from microprocess.declarations import Declarations, ReduceMode, get_declarations, load_declarations
from microprocess.pipeline.splitter import SPLITS_PREFIX
from microprocess.stacks import MANIFESTS_PREFIX

from . import contract, logical_ids
from .access_logs import AccessLogBucket
from .adaptive import AdaptiveConcurrencyControl
from .api_key import ApiKeySecret
from .bundled_service import BundledService, DomainSettings
from .dead_letter import TIMEOUT as DEAD_LETTER_TIMEOUT
from .dead_letter import DeadLetterHandler
from .endpoints import Endpoint, resolve_endpoints
from .forwarder import CLAIMS_PREFIX, REPORTS_PREFIX, Forwarder
from .item_source import ItemSourceTable
from .lambda_function import CLOUD_ARCHITECTURE, RUNTIME, FunctionDefaults, code_asset
from .ledger import LedgerTable
from .monitoring import Monitoring
from .nag import acknowledge, skip_checkov
from .network import Network
from .push_queue import PushQueue
from .push_settings import VISIBILITY_FACTOR, PushSettings
from .reports import DEFAULT_EXPIRY_DAYS, Reports
from .service_roles import ServiceRoles, jobs_of, role_key
from .signing_secret import SigningSecret
from .splitter import Splitter
from .sweeper import RATE as SWEEP_RATE
from .sweeper import STUCK_AFTER_S, Sweeper, timing_environment

#: The feature flags the cloud stage relies on (`cdk init` writes them into a new app's cdk.json).
REQUIRED_FEATURE_FLAGS = ("@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy",)


def table_variable(role: str) -> str:
    """The variable naming table `role` in a bundled service's container (`companies` -> `COMPANIES_TABLE`)."""
    return f"{role.upper().replace('-', '_')}_TABLE"


def isolated_services(declared: Declarations, services: Mapping[str, Any]) -> list[str]:
    """The services of this stage declared `isolated_forwarder = true` (each gets a task forwarder of its
    own); refuses a stage where they would leave the shared forwarder no job, or a job `adaptive`."""
    isolated = sorted(name for name in services if declared.services.get(name).isolated_forwarder)
    if not isolated:
        return []
    if all(job.service in isolated for job in declared.jobs):
        raise ValueError(
            f"every job pushes to a service with isolated_forwarder = true ({isolated}): isolation keeps one "
            "service's secret from the others' forwarder; leave it off for one service (the shared forwarder's)"
        )
    controlled = controlled_jobs(list(declared.jobs), list(declared.services))
    adaptive = [job.name for job in controlled if job.service in isolated]
    if adaptive:
        raise ValueError(
            f"job(s) {adaptive} have their caps moved by the controller (adaptive = true, or a service's "
            "declared capacity), which finds a job's event source on the shared forwarder: drop adaptive / "
            "capacity or isolated_forwarder = true on their service"
        )
    return isolated


@dataclass(frozen=True)
class VpcAttachment:
    """A team's existing VPC the pushers (forwarder, reducer) run in, for external services
    reachable only inside it (e.g. an internal load balancer). Nothing else goes there.

    Attributes:
        vpc_id: the VPC (`vpc-...`).
        subnet_ids: private subnets with a route to SQS, DynamoDB, S3 and Secrets Manager
            (NAT or VPC endpoints), in at least two availability zones.
        security_group_id: the pushers' security group (one the services admit); None creates
            one in the VPC (outbound only).
    """

    vpc_id: str
    subnet_ids: tuple[str, ...]
    security_group_id: str | None = None

    def __post_init__(self) -> None:
        if not self.vpc_id.startswith("vpc-"):
            raise ValueError(f"vpc_id must be a VPC id (vpc-...), got {self.vpc_id!r}")
        if not self.subnet_ids or not all(s.startswith("subnet-") for s in self.subnet_ids):
            raise ValueError(
                f"subnet_ids must list the VPC's private subnet ids (subnet-...), got {list(self.subnet_ids)}"
            )
        if self.security_group_id is not None and not self.security_group_id.startswith("sg-"):
            raise ValueError(f"security_group_id must be a security group id (sg-...), got {self.security_group_id!r}")


@dataclass(frozen=True, kw_only=True)
class StageSettings:
    """Everything one stage needs besides the declarations and the service URLs.

    Attributes:
        repo_root: the project folder that holds a bundled service's folder and Dockerfile
            (default: the working directory). The functions' code comes from the installed
            package (`code_asset`), not from this folder.
        ses_sender: the address reports are mailed from.
        local: the local stage (services run as local processes; no VPC, Fargate, monitoring).
        log_level: the functions' LOG_LEVEL.
        intermediate_expiry_days: days before report parts, quarantined messages and
            claim-checked items expire.
        layer_arns: published layers attached to every function by ARN (cloud: Powertools).
        layer_paths: folders packaged as a layer for every function (local dependencies).
        forwarder_max_concurrency: local stage only: a cap on every event source's concurrent
            batches, below what the jobs declare (one laptop's cores run every batch), or None.
        task_visibility_timeout_s: local stage only: every task queue's visibility timeout,
            so that a crashed batch comes back in seconds rather than after 6 x the
            forwarder timeout (redeliveries are harmless: pushes are idempotent), or None.
        reduce_visibility_timeout_s: local stage only: the same for the reduce queue, or None.
        max_queue_depth_cap: local stage only: a cap on every job's `max_queue_depth` (the
            splitter waits while a job's queue is this deep: the emulator slows past ~10,000).
        sweeper_rate_minutes: local stage only: how often the sweeper runs (cloud: every 5 minutes).
        stuck_after_s: local stage only: quiet seconds before the sweeper restarts a split or
            repairs a run (cloud: 900), so that a dead splitter is noticed within a minute locally.
        domain: host names and TLS for the bundled services (cloud, optional).
        allow_plain_http: let a bundled service without `domain` listen on plain HTTP (port 80,
            the ALB's DNS name). Off by default: such a stage fails with the context to pass.
        vpc: a team's VPC for the pushers when every service is external (cloud, optional).
        alarm_email: subscribed to the alarm topic (cloud, optional).
        score_work_ms: simulated work per item in a bundled service (`SCORE_WORK_MS`, load tests), ms.
        service_docs: a bundled service's roles serve /docs, /redoc and /openapi.json
            (`SERVICE_DOCS`; cloud, off by default: the public API shows no schema unless asked).
        trace_forwarder: cloud: X-Ray active tracing on the task forwarder too. Off by default:
            it runs once per batch (1.9 M times for 19 M items), and X-Ray bills $5 per million
            traces recorded (its default sampling keeps ~5 % of invocations at volume: about
            $0.025 per million items). The other functions run a few times per run and are traced.
    """

    ses_sender: str
    repo_root: Path = field(default_factory=Path.cwd)
    local: bool = False
    log_level: str = "INFO"
    intermediate_expiry_days: int = DEFAULT_EXPIRY_DAYS
    layer_arns: tuple[str, ...] = ()
    layer_paths: tuple[Path, ...] = ()
    forwarder_max_concurrency: int | None = None
    task_visibility_timeout_s: int | None = None
    reduce_visibility_timeout_s: int | None = None
    sweeper_rate_minutes: int | None = None
    stuck_after_s: int | None = None
    max_queue_depth_cap: int | None = None
    domain: DomainSettings | None = None
    allow_plain_http: bool = False
    vpc: VpcAttachment | None = None
    alarm_email: str | None = None
    score_work_ms: int = 0
    service_docs: bool = False
    trace_forwarder: bool = False

    def __post_init__(self) -> None:
        if self.local:
            return
        for name in (
            "forwarder_max_concurrency",
            "task_visibility_timeout_s",
            "reduce_visibility_timeout_s",
            "sweeper_rate_minutes",
            "stuck_after_s",
            "max_queue_depth_cap",
        ):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is a local-stage setting; the cloud derives it from the declarations")


class MicroprocessPlatform(Construct):
    """microprocess for one stage: add it to any stack.

    Args:
        settings: the stage's settings.
        declarations: the declarations, or the path of a declaration file (default:
            `get_declarations()`, i.e. `microprocess.toml`). The file ships in the functions'
            code asset as `microprocess.toml`.
        service_urls: `{service: url}`: where a service is reached, overriding its declared
            `url` or `bundled` (cloud) or the default local port (local).

    Attributes:
        declarations: what it was built from.
        push_settings: the queue numbers derived from the job declarations.
        endpoints: each service's endpoint in this stage, by service name.
        ledger, reports, push_queue: the shared stateful constructs.
        source_tables: one `ItemSourceTable` per declared table role.
        signing_secrets: one `SigningSecret` per service.
        api_keys: one `ApiKeySecret` per service with a live role (a bundled service built here;
            locally, a declared bundled service that `local up` runs), by name.
        bundled: the `BundledService` of each service built here (cloud), by name.
        forwarder, reducer, dead_letter, splitter, sweeper: the functions' constructs.
        adaptive: the scheduled adaptive concurrency of the jobs declared `adaptive = true`
            (None when no job is).
        network: the VPC built for bundled services (None when none is built).
        monitoring: dashboard and alarms (cloud; None locally).
        outputs: the stack outputs of the contract (`microprocess.stacks`), by name.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        declarations: Declarations | Path | str | None = None,
        service_urls: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if isinstance(declarations, Declarations):
            declared = declarations
        elif declarations is None:
            declared = get_declarations()
        else:
            declared = load_declarations(declarations)
        self.declarations = declared
        jobs = list(declared.jobs)
        local = settings.local
        missing_flags = [f for f in REQUIRED_FEATURE_FLAGS if not local and not FeatureFlags.of(self).is_enabled(f)]
        if missing_flags:
            raise ValueError(
                f"the microprocess platform needs the CDK feature flag(s) {missing_flags} (S3 access logs "
                "delivered by bucket policy, no ACLs): set them to true in the app's cdk.json context"
            )
        stateful = RemovalPolicy.DESTROY if local else RemovalPolicy.RETAIN
        Tags.of(self).add("project", "microprocess")
        Tags.of(self).add("stage", "local" if local else "cloud")

        push = PushSettings.from_jobs(jobs)
        if settings.forwarder_max_concurrency is not None:
            push = push.capped(settings.forwarder_max_concurrency)
        push = push.with_visibility(
            tasks_s=settings.task_visibility_timeout_s, reduces_s=settings.reduce_visibility_timeout_s
        )
        self.push_settings = push
        self.endpoints = resolve_endpoints(declared, service_urls or {}, local=local)
        for plain in (e for e in self.endpoints.values() if e.plain_http_reason):
            Annotations.of(self).add_warning(
                f"service '{plain.service}' is reached over plain HTTP ({plain.url}), accepted because: "
                f"{plain.plain_http_reason}"
            )
        builds = [e for e in self.endpoints.values() if e.bundled]
        if builds and not local and settings.domain is None and not settings.allow_plain_http:
            raise ValueError(
                f"the bundled service(s) {[e.service for e in builds]} would listen on plain HTTP without a domain: "
                "pass -c domain=example.com -c hosted_zone_id=Z... -c certificate_arn=arn:aws:acm:... (HTTPS), "
                "or give their URLs in service_urls, or accept plain HTTP for a throwaway stage with "
                "-c allow_plain_http=true"
            )
        if builds and settings.vpc is not None:
            raise ValueError(
                f"context vpc_id is for stages whose services are all external; {[e.service for e in builds]} "
                "are bundled (built in a VPC of their own): give their URLs in service_urls, or drop vpc_id"
            )

        access_logs = None if local else AccessLogBucket(self, "AccessLogs", removal_policy=stateful)
        self.ledger = LedgerTable(self, "Ledger", removal_policy=stateful)
        logical_ids.check_unique("table", declared.tables)
        self.source_tables = {
            role: ItemSourceTable(self, f"Table-{role}", partition_key=table.partition_key, removal_policy=stateful)
            for role, table in declared.tables.items()
        }
        self.push_queue = PushQueue(
            self,
            "PushQueue",
            jobs=push.jobs,
            reduces=push.reduces,
            dead_letter_visibility_timeout=Duration.seconds(VISIBILITY_FACTOR * DEAD_LETTER_TIMEOUT.to_seconds()),
        )
        self.reports = Reports(
            self,
            "Reports",
            sender=settings.ses_sender,
            expiry_days=settings.intermediate_expiry_days,
            server_access_logs_bucket=access_logs.bucket if access_logs else None,
            versioned=not local,
            removal_policy=stateful,
        )
        logical_ids.check_unique("service", self.endpoints)
        self.signing_secrets = {
            name: SigningSecret(self, f"Signing-{name}", service_name=name) for name in self.endpoints
        }

        # The live role's API key: the services built here (cloud), or run in both roles by `local up`.
        live_roles = [
            name
            for name, endpoint in self.endpoints.items()
            if (
                bool(declared.services.get(name).bundled and declared.services.get(name).local_app)
                if local
                else endpoint.bundled is not None
            )
        ]
        self.api_keys = {name: ApiKeySecret(self, f"ApiKey-{name}", service_name=name) for name in live_roles}

        self.service_roles = self._service_roles(local, live_roles)

        self.network: Network | None = None
        self.bundled: dict[str, BundledService] = {}
        if builds:
            assert access_logs is not None
            self.network = Network(self, "Network", flow_logs_bucket=access_logs.bucket)
            for endpoint in builds:
                self.bundled[endpoint.service] = self._bundled_service(endpoint, settings, self.network, access_logs)
        service_urls_resolved = {
            name: endpoint.url if endpoint.url is not None else self.bundled[name].queue_url
            for name, endpoint in self.endpoints.items()
        }
        self.service_urls = service_urls_resolved

        stack = Stack.of(self)
        shared_environment = {
            contract.POWERTOOLS_SERVICE_NAME: contract.POWERTOOLS_SERVICE,
            contract.POWERTOOLS_METRICS_NAMESPACE: contract.METRIC_NAMESPACE,
            contract.LOG_LEVEL: settings.log_level,
            # The emulator has no X-Ray.
            **({contract.POWERTOOLS_TRACE_DISABLED: "true"} if local else {}),
            # Every function sees the pipeline: the ledger, the bucket, the declarations, the queues.
            contract.LEDGER_TABLE: self.ledger.table.table_name,
            contract.REPORTS_BUCKET: self.reports.bucket.bucket_name,
            contract.MICROPROCESS_DECLARATIONS: contract.DECLARATIONS_FILE,
            contract.JOB_QUEUES: stack.to_json_string(
                {job: queue.queue_url for job, queue in self.push_queue.task_queues.items()}
            ),
            contract.REDUCE_QUEUE_URL: self.push_queue.reduce_queue.queue_url,
            contract.DEAD_LETTER_QUEUE_URL: self.push_queue.dead_letter_queue.queue_url,
        }
        defaults = FunctionDefaults(
            code=code_asset(declared.path),
            layers=self._layers(settings),
            environment=shared_environment,
            tracing=not local,
            architecture=None if local else CLOUD_ARCHITECTURE,
        )
        source_tables_json = stack.to_json_string(
            {role: table.table.table_name for role, table in self.source_tables.items()}
        )
        pusher_network = self._pusher_network(settings)
        secrets: list[secretsmanager.ISecret] = [s.secret for s in self.signing_secrets.values()]
        isolated = isolated_services(declared, self.endpoints)
        shared = [name for name in self.endpoints if name not in isolated]

        def endpoints_of(names: list[str]) -> str:
            """`SERVICE_ENDPOINTS` naming `names` only: a forwarder knows the secrets it may read."""
            return stack.to_json_string(
                {
                    name: {
                        "url": service_urls_resolved[name],
                        "secret_arn": self.signing_secrets[name].secret.secret_arn,
                    }
                    for name in names
                }
            )

        pushing: dict[str, Any] = {
            "defaults": defaults,
            "push_queue": self.push_queue,
            "ledger_table": self.ledger.table,
            "reports_bucket": self.reports.bucket,
        }
        sweep: dict[str, Any] = {
            "rate": Duration.minutes(settings.sweeper_rate_minutes) if settings.sweeper_rate_minutes else SWEEP_RATE,
            "stuck_after_s": settings.stuck_after_s or STUCK_AFTER_S,
        }

        def task_forwarder(construct_id: str, services: list[str]) -> Forwarder:
            """The forwarder of the jobs of `services`, reading those services' signing secrets only."""
            return Forwarder(
                self,
                construct_id,
                name="forwarder",
                sources={
                    job: (self.push_queue.task_queues[job], consumer)
                    for job, consumer in push.jobs.items()
                    if declared.jobs.get(job).service in services
                },
                timeout=Duration.seconds(push.forwarder_timeout_s),
                # The sweeper's timing: the forwarder's deferral grace outlasts its restart of a dead splitter.
                environment={contract.SERVICE_ENDPOINTS: endpoints_of(services), **timing_environment(**sweep)},
                tracing=defaults.tracing and settings.trace_forwarder,
                signing_secrets=[self.signing_secrets[name].secret for name in services],
                **pushing,
                **pusher_network,
            )

        self.forwarder = task_forwarder("Forwarder", shared)
        if pusher_network and "security_groups" not in pusher_network:
            # The reducer shares the forwarder's security group: the one peer the services admit.
            pusher_network["security_groups"] = self.forwarder.function.connections.security_groups
        self.reducer = Forwarder(
            self,
            "Reducer",
            name="reducer",
            sources={"reduce": (self.push_queue.reduce_queue, push.reduces)},
            timeout=Duration.seconds(push.reducer_timeout_s),
            environment={
                contract.SERVICE_ENDPOINTS: endpoints_of(list(self.endpoints)),
                contract.SES_SENDER: settings.ses_sender,
            },
            email_identity=self.reports.email_identity,
            # The reducer pushes reduce parts, finalizes and completion callbacks to every service.
            signing_secrets=secrets,
            **pushing,
            **pusher_network,
        )
        #: A forwarder of its own for each service declared `isolated_forwarder` (with jobs), by service.
        self.isolated_forwarders = {
            name: task_forwarder(f"Forwarder-{name}", [name]) for name in isolated if declared.jobs_of(name)
        }
        #: Every job's task event source, whichever forwarder consumes it.
        self.task_event_sources = {
            job: source
            for forwarder in (self.forwarder, *self.isolated_forwarders.values())
            for job, source in forwarder.event_sources.items()
        }
        for name, service in self.bundled.items():
            service.allow_queue_access_from(self.isolated_forwarders.get(name, self.forwarder).function)
        self.dead_letter = DeadLetterHandler(
            self,
            "DeadLetter",
            defaults=defaults,
            push_queue=self.push_queue,
            ledger_table=self.ledger.table,
            reports_bucket=self.reports.bucket,
        )
        self.splitter = Splitter(
            self,
            "Splitter",
            defaults=defaults,
            jobs=jobs,
            push_queue=self.push_queue,
            ledger_table=self.ledger.table,
            reports_bucket=self.reports.bucket,
            source_tables={role: table.table for role, table in self.source_tables.items()},
            environment={
                contract.SOURCE_TABLES: source_tables_json,
                **(
                    {contract.MAX_QUEUE_DEPTH_CAP: str(settings.max_queue_depth_cap)}
                    if settings.max_queue_depth_cap
                    else {}
                ),
            },
        )
        self.sweeper = Sweeper(
            self,
            "Sweeper",
            defaults=defaults,
            push_queue=self.push_queue,
            ledger_table=self.ledger.table,
            splitter_function=self.splitter.function,
            **sweep,
        )
        adaptive = controlled_jobs(jobs, declared.services)
        self.adaptive: AdaptiveConcurrencyControl | None = None
        if adaptive:  # only when a job opts in: a stage without one has no extra function or schedule
            self.adaptive = AdaptiveConcurrencyControl(
                self,
                "Adaptive",
                defaults=defaults,
                forwarder=self.forwarder.function,
                sources={job.name: self.task_event_sources[job.name] for job in adaptive},
                queues={job.name: self.push_queue.task_queues[job.name] for job in adaptive},
                ledger_table=self.ledger.table,
            )
        self.monitoring: Monitoring | None = None
        if not local:
            target_groups: dict[str, elbv2.ApplicationTargetGroup] = {}
            for service in self.bundled.values():
                target_groups[service.live_host_prefix] = service.live.target_group
                target_groups[service.queue_host_prefix] = service.queue.target_group
            self.monitoring = Monitoring(
                self,
                "Monitoring",
                jobs=jobs,
                push_queue=self.push_queue,
                forwarder=self.forwarder.function,
                reducer=self.reducer.function,
                service_target_groups=target_groups,
                alarm_email=settings.alarm_email,
                shared=shared_services(jobs, declared.services),
            )

        self._pin_stateful(access_logs)
        self._acknowledge_grant_wildcards()
        self._skip_function_checkov_findings()
        self.outputs = self._outputs(stack, source_tables_json)

    # ------------------------------------------------------------------ parts

    def _layers(self, settings: StageSettings) -> list[lambda_.ILayerVersion]:
        layers: list[lambda_.ILayerVersion] = [
            lambda_.LayerVersion.from_layer_version_arn(self, f"Layer{i}", arn)
            for i, arn in enumerate(settings.layer_arns)
        ]
        for i, path in enumerate(settings.layer_paths):
            if not path.is_dir():
                raise FileNotFoundError(f"layer folder {path} does not exist (context key local_layer_path)")
            layers.append(
                lambda_.LayerVersion(
                    self,
                    f"LocalLayer{i}",
                    code=lambda_.Code.from_asset(str(path)),
                    compatible_runtimes=[RUNTIME],
                    description="microprocess dependencies for the local stage",
                )
            )
        return layers

    def _pusher_network(self, settings: StageSettings) -> dict[str, Any]:
        """Where the forwarder and the reducer run: the built VPC, the team's VPC, or no VPC."""
        if self.network is not None:
            return {"vpc": self.network.vpc, "vpc_subnets": self.network.private_subnets}
        attachment = settings.vpc
        if attachment is None or settings.local:
            return {}
        vpc = ec2.Vpc.from_vpc_attributes(
            self,
            "TeamVpc",
            vpc_id=attachment.vpc_id,
            # Unused: the subnets are given explicitly (no lookup at synth).
            availability_zones=[f"{Stack.of(self).region}-subnet{n}" for n in range(len(attachment.subnet_ids))],
        )
        subnets = ec2.SubnetSelection(
            subnets=[
                ec2.Subnet.from_subnet_id(self, f"TeamSubnet{n}", subnet_id)
                for n, subnet_id in enumerate(attachment.subnet_ids)
            ]
        )
        network: dict[str, Any] = {"vpc": vpc, "vpc_subnets": subnets}
        if attachment.security_group_id:
            network["security_groups"] = [
                ec2.SecurityGroup.from_security_group_id(self, "PusherSecurityGroup", attachment.security_group_id)
            ]
        return network

    def _bundled_service(
        self, endpoint: Endpoint, settings: StageSettings, network: Network, access_logs: AccessLogBucket
    ) -> BundledService:
        """A bundled service (Fargate live + queue roles) with the access its queue role needs:
        it builds reports itself when a job reduces with `reduce = "service"`."""
        name = endpoint.service
        service = self.declarations.services.get(name)
        assert endpoint.bundled is not None
        tables = {role: self.source_tables[role].table for role in service.tables}
        common = {
            **{table_variable(role): table.table_name for role, table in tables.items()},
            contract.SCORE_WORK_MS: str(settings.score_work_ms),
            contract.SERVICE_DOCS: "true" if settings.service_docs else "false",
        }
        secret = self.signing_secrets[name].secret
        api_key = self.api_keys[name].secret
        built = BundledService(
            self,
            logical_ids.pascal(name),
            service_name=name,
            folder=endpoint.bundled,
            vpc=network.vpc,
            subnets=network.private_subnets,
            image_directory=settings.repo_root,
            live_environment={**common, contract.API_KEY_SECRET_ARN: api_key.secret_arn},
            queue_environment={
                **common,
                contract.LEDGER_TABLE: self.ledger.table.table_name,
                contract.REPORTS_BUCKET: self.reports.bucket.bucket_name,
                contract.SIGNING_SECRET_ARN: secret.secret_arn,
                contract.SES_SENDER: settings.ses_sender,
            },
            domain=settings.domain,
            access_logs_bucket=access_logs.bucket,
            task_roles={
                contract.LIVE_ROLE: self.service_roles[name].roles[role_key(name, contract.LIVE_ROLE)],
                contract.QUEUE_ROLE: self.service_roles[name].roles[role_key(name, contract.QUEUE_ROLE)],
            },
        )
        return built

    def _service_roles(self, local: bool, bundled: list[str]) -> dict[str, ServiceRoles]:
        """The task roles of the services whose processes this stage runs: the bundled ones (both
        stages) and, locally, each external service `local up` runs (`local_app`, `local_command`)."""
        declared = self.declarations
        principal: iam.IPrincipal = (
            iam.AccountRootPrincipal() if local else iam.ServicePrincipal("ecs-tasks.amazonaws.com")
        )
        names = [
            name for name in self.endpoints if name in bundled or (local and declared.services.get(name).runs_locally)
        ]
        return {
            name: ServiceRoles(
                self,
                f"Roles-{name}",
                service_name=name,
                principal=principal,
                bundled=name in bundled,
                tables={role: self.source_tables[role].table for role in declared.services.get(name).tables},
                jobs=jobs_of(name, declared.jobs),
                signing_secret=self.signing_secrets[name].secret,
                api_key=self.api_keys[name].secret if name in bundled else None,
                ledger_table=self.ledger.table,
                reports_bucket=self.reports.bucket,
                email_identity=self.reports.email_identity,
            )
            for name in names
        }

    def _pin_stateful(self, access_logs: AccessLogBucket | None) -> None:
        logical_ids.pin(self.ledger.table, logical_ids.LEDGER)
        for role, table in self.source_tables.items():
            logical_ids.pin(table.table, logical_ids.table(role))
        for job, queue in self.push_queue.task_queues.items():
            logical_ids.pin(queue, logical_ids.task_queue(job))
        logical_ids.pin(self.push_queue.reduce_queue, logical_ids.REDUCE_QUEUE)
        logical_ids.pin(self.push_queue.dead_letter_queue, logical_ids.DEAD_LETTER_QUEUE)
        logical_ids.pin(self.reports.bucket, logical_ids.REPORTS_BUCKET)
        for name, secret in self.signing_secrets.items():
            logical_ids.pin(secret.secret, logical_ids.signing_secret(name))
        for name, key in self.api_keys.items():
            logical_ids.pin(key.secret, logical_ids.api_key(name))
        if access_logs is not None:
            logical_ids.pin(access_logs.bucket, logical_ids.ACCESS_LOGS_BUCKET)

    def _acknowledge_grant_wildcards(self) -> None:
        """The wildcards CDK's `grant_*` methods write, acknowledged where they occur."""
        table_indexes = f"AwsSolutions-IAM5[Resource::<{logical_ids.LEDGER}.Arn>/index/*]"
        bucket = logical_ids.REPORTS_BUCKET

        def prefix(p: str) -> str:
            return f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/{p}*]"

        reason_index = "The ledger grant covers its indexes: the one index (runs-by-job) lists a job's runs."
        reason_prefix = (
            "Objects are addressed by run and task ids under a fixed key prefix of the reports bucket; "
            "the grant is scoped to that prefix."
        )
        # The functions' actions are explicit lists (infra/permissions.py): only resource
        # wildcards remain, each scoped to the ledger's indexes or to one key prefix.
        task_forwarders = (self.forwarder, *self.isolated_forwarders.values())
        for consumer in (*task_forwarders, self.reducer, self.dead_letter, self.splitter, self.sweeper):
            acknowledge(consumer, reason_index, table_indexes)
        for forwarder in task_forwarders:
            acknowledge(forwarder, reason_prefix, prefix(CLAIMS_PREFIX))
        acknowledge(
            self.reducer,
            "The built-in reduce writes and reads every report file of a run (reports/<job>/<run>/...), "
            "named by run ids only known at run time: the grant is scoped to the reports/ prefix.",
            prefix(REPORTS_PREFIX),
        )
        acknowledge(self.splitter, reason_prefix, prefix(CLAIMS_PREFIX))
        acknowledge(
            self.splitter,
            "Run-time manifests are uploaded by the CLI under manifests/<job>/<run>... with names known at "
            "run time: GetObject only, scoped to the manifests/ prefix.",
            prefix(MANIFESTS_PREFIX),
        )
        acknowledge(
            self.splitter,
            "The splitter keeps each page it read under splits/<run>/... (names known at run time), so that a "
            "re-sent page sends the same items: Get/PutObject scoped to the splits/ prefix.",
            prefix(SPLITS_PREFIX),
        )
        acknowledge(self.dead_letter, reason_prefix, prefix("quarantine/"))
        for name, roles in self.service_roles.items():
            reducing = [job.name for job in jobs_of(name, self.declarations.jobs) if job.reduce is ReduceMode.SERVICE]
            queue_role = roles.roles.get(role_key(name, contract.QUEUE_ROLE))
            if queue_role is None or not reducing:
                continue
            acknowledge(
                queue_role,
                "The service reduce writes and reads the report files of its own jobs' runs "
                "(reports/<job>/<run>/...), named by run ids known at run time: scoped to each job's prefix.",
                *(prefix(f"{REPORTS_PREFIX}{job}/") for job in reducing),
            )

    def _skip_function_checkov_findings(self) -> None:
        """The checkov findings on the five functions that do not apply to them, each with its reason
        (the log-group and variable findings every function shares are skipped in `MicroprocessFunction`)."""
        queue_driven = (
            "Invoked only by its SQS event source: a batch that keeps failing is redriven by the queue to the "
            "platform's dead-letter queue; a Lambda DLQ catches failed asynchronous invocations, which it has none of."
        )
        outside_vpc = (
            "Calls only AWS APIs (SQS, DynamoDB, S3, Lambda) over TLS with IAM; in a VPC it would need a NAT "
            "gateway or interface endpoints to reach them, and it serves and reaches nothing private."
        )
        pusher_outside_vpc = (
            "Its services are external HTTPS endpoints (no bundled service, no vpc_id context). " + outside_vpc
        )
        # (function, why no Lambda DLQ, why no reserved concurrency, why outside a VPC when it is)
        findings = (
            *(
                (
                    forwarder.function,
                    queue_driven,
                    "Its concurrency is capped per job by each event source's maximum concurrency (the job's "
                    "max_concurrency); a reserved limit would cap all jobs together and take from the account pool.",
                    pusher_outside_vpc,
                )
                for forwarder in (self.forwarder, *self.isolated_forwarders.values())
            ),
            (
                self.reducer.function,
                queue_driven,
                "Its concurrency is capped by the reduce queue's event source (maximum concurrency); a reserved "
                "limit would take from the account's pool.",
                pusher_outside_vpc,
            ),
            (
                self.dead_letter.function,
                "Invoked only by the DLQ's event source; what it cannot record goes to quarantine/ in the reports "
                "bucket, and a DLQ behind the DLQ would hold nothing new.",
                "Its concurrency is capped by the DLQ's event source (maximum concurrency).",
                outside_vpc,
            ),
            (
                self.splitter.function,
                "Invoked asynchronously (its job's schedule, `microprocess run`, itself): a split that dies is "
                "found by the sweeper, which resumes it from the cursor the ledger holds.",
                "Runs one invocation per running split segment (a job's declared segments); a reserved limit "
                "would block starting runs of other jobs.",
                outside_vpc,
            ),
            (
                self.sweeper.function,
                "Invoked by its rate schedule: a failed sweep is simply the next one, minutes later; it keeps no "
                "state of its own.",
                "Runs once per rate period, one invocation at a time in practice.",
                outside_vpc,
            ),
        )
        for function, no_dead_letter, no_reserved_concurrency, no_vpc in findings:
            skip_checkov(function, no_dead_letter, "CKV_AWS_116")
            skip_checkov(function, no_reserved_concurrency, "CKV_AWS_115")
            if not function.is_bound_to_vpc:
                skip_checkov(function, no_vpc, "CKV_AWS_117")

    def _outputs(self, stack: Stack, source_tables_json: str) -> dict[str, str]:
        """The outputs of the contract (`microprocess.stacks`), in its order."""
        values = {
            "JobQueueUrls": stack.to_json_string(
                {job: queue.queue_url for job, queue in self.push_queue.task_queues.items()}
            ),
            "ReduceQueueUrl": self.push_queue.reduce_queue.queue_url,
            "DeadLetterQueueUrl": self.push_queue.dead_letter_queue.queue_url,
            "LedgerTable": self.ledger.table.table_name,
            "ReportsBucket": self.reports.bucket.bucket_name,
            "SourceTables": source_tables_json,
            "ServiceSecretArns": stack.to_json_string(
                {name: secret.secret.secret_arn for name, secret in self.signing_secrets.items()}
            ),
            "ApiKeyArns": stack.to_json_string({name: key.secret.secret_arn for name, key in self.api_keys.items()}),
            "ServiceRoleArns": stack.to_json_string(
                {key: arn for roles in self.service_roles.values() for key, arn in roles.arns().items()}
            ),
            "SplitterFunctionName": self.splitter.function.function_name,
            "ForwarderFunctionName": self.forwarder.function.function_name,
            "ReduceForwarderFunctionName": self.reducer.function.function_name,
            "DeadLetterFunctionName": self.dead_letter.function.function_name,
            "SweeperFunctionName": self.sweeper.function.function_name,
        }
        if self.monitoring is not None:
            values |= {
                "ServiceUrls": stack.to_json_string(self.service_urls),
                "DashboardName": self.monitoring.dashboard.dashboard_name,
                "AlarmTopicArn": self.monitoring.topic.topic_arn,
            }
        expected = contract.CLOUD_OUTPUTS if self.monitoring is not None else contract.LOCAL_OUTPUTS
        if tuple(values) != expected:
            raise AssertionError(f"stack outputs {list(values)} differ from the contract {list(expected)}")
        return values

    def source_table(self, role: str) -> dynamodb.ITable:
        """The deployed table of the role `role` (KeyError naming the declared roles)."""
        if role not in self.source_tables:
            raise KeyError(f"no source table '{role}'; declared tables: {sorted(self.source_tables)}")
        return self.source_tables[role].table
