"""The microprocess stack: composes the constructs for one stage, cloud or local.

* cloud: everything, with the scores services on Fargate behind two ALBs in a VPC, the
  forwarder in that VPC, the Powertools layer by ARN, a dashboard and alarms.
* local: the same serverless core (tables, queues, functions, bucket, secret, SES
  identity, schedules) pointed at the locally run microservice; no VPC, Fargate, ALB,
  monitoring or custom resources (the emulator runs none of them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from aws_cdk import CfnOutput, CfnResource, Duration, RemovalPolicy, Stack, Tags
from aws_cdk import aws_lambda as lambda_
from constructs import Construct, IConstruct

from infra import contract
from infra.access_logs import AccessLogBucket
from infra.dead_letter import TIMEOUT as DEAD_LETTER_TIMEOUT
from infra.dead_letter import DeadLetterHandler
from infra.forwarder import Forwarder
from infra.item_source import ItemSourceTable, source_partition_key
from infra.lambda_function import RUNTIME, FunctionDefaults, code_asset
from infra.ledger import LedgerTable
from infra.monitoring import Monitoring
from infra.nag import acknowledge
from infra.network import Network
from infra.push_queue import PushQueue
from infra.push_settings import VISIBILITY_FACTOR, PushSettings
from infra.reports import DEFAULT_EXPIRY_DAYS, Reports
from infra.scores_service import DomainSettings, ScoresService
from infra.signing_secret import SigningSecret
from infra.splitter import Splitter
from infra.sweeper import Sweeper
from microprocess.declarations import JobRegistry, get_declarations

#: The role name of the item source table every declared job reads today.
COMPANIES_ROLE = "companies"

#: Logical IDs of the stateful resources, fixed so that a refactor never replaces them.
PINNED_LOGICAL_IDS = {
    "ledger": "LedgerTable",
    "companies": "CompaniesTable",
    "task_queue": "TaskQueue",
    "reduce_queue": "ReduceQueue",
    "dead_letter_queue": "DeadLetterQueue",
    "reports_bucket": "ReportsBucket",
    "signing_secret": "SigningSecret",
    "access_logs_bucket": "AccessLogsBucket",
}


@dataclass(frozen=True)
class LocalServiceUrls:
    """The locally run microservice processes (the local stage's stand-in for Fargate)."""

    queue: str
    live: str


@dataclass(frozen=True)
class StageSettings:
    """Everything one stage needs besides the job declarations.

    Attributes:
        repo_root: the repository (functions/, microprocess/, microservice/Dockerfile).
        ses_sender: the address reports are mailed from.
        log_level: the functions' LOG_LEVEL.
        intermediate_expiry_days: days before report parts, quarantined messages and
            claim-checked items expire.
        layer_arns: published layers attached to every function by ARN (cloud: Powertools).
        layer_paths: folders packaged as a layer for every function (local dependencies).
        forwarder_max_concurrency: local stage only: a lower cap on concurrent forwarder
            batches than the jobs declare (one laptop's cores run every batch), or None.
        task_visibility_timeout_s: local stage only: the task queue's visibility timeout,
            so that a crashed batch comes back in seconds rather than after 6 x the
            forwarder timeout (redeliveries are harmless: pushes are idempotent), or None.
        reduce_visibility_timeout_s: local stage only: the same for the reduce queue
            (whose forwarder's timeout fits a reduce push), or None.
        local_services: set for the local stage: the URLs of the locally run services,
            replacing the VPC, Fargate services and ALBs.
        domain: host names and TLS for the cloud services (optional).
        alarm_email: subscribed to the alarm topic (cloud, optional).
        score_work_ms: simulated work per score in the service (load tests), ms.
    """

    repo_root: Path
    ses_sender: str
    log_level: str = "INFO"
    intermediate_expiry_days: int = DEFAULT_EXPIRY_DAYS
    layer_arns: tuple[str, ...] = ()
    layer_paths: tuple[Path, ...] = ()
    local_services: LocalServiceUrls | None = None
    forwarder_max_concurrency: int | None = None
    task_visibility_timeout_s: int | None = None
    reduce_visibility_timeout_s: int | None = None
    domain: DomainSettings | None = None
    alarm_email: str | None = None
    score_work_ms: int = 0

    @property
    def is_local(self) -> bool:
        return self.local_services is not None


def pin_logical_id(resource: IConstruct, logical_id: str) -> None:
    """Give the CloudFormation resource behind an L2 construct a fixed logical ID."""
    cast(CfnResource, resource.node.default_child).override_logical_id(logical_id)


class MicroprocessStack(Stack):
    """One stage of microprocess. Composes constructs; builds nothing itself.

    Args:
        settings: the stage's settings (cloud unless `settings.local_services` is set).
        jobs: the job declarations (default: the declared `JOBS`).
        **kwargs: passed to `Stack` (env, description, ...).

    Attributes:
        ledger, companies, push_queue, reports, signing_secret, forwarder, reducer,
        dead_letter, splitter, sweeper: the constructs of both stages (`forwarder` consumes
        the task queue, `reducer` the reduce queue).
        scores, monitoring, network: the cloud-only constructs (None locally).
        push_settings: the queue numbers derived from the job declarations.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: StageSettings,
        jobs: JobRegistry | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        declared = list(jobs if jobs is not None else get_declarations().jobs)
        local = settings.is_local
        stateful = RemovalPolicy.DESTROY if local else RemovalPolicy.RETAIN
        Tags.of(self).add("project", "microprocess")
        Tags.of(self).add("stage", "local" if local else "cloud")
        push = PushSettings.from_jobs(declared)
        if settings.forwarder_max_concurrency is not None:
            if not local:
                raise ValueError("forwarder_max_concurrency is a local-stage setting; the cloud uses the declarations")
            cap = settings.forwarder_max_concurrency
            push = replace(
                push,
                max_concurrency=min(push.max_concurrency, cap),
                reduce_max_concurrency=min(push.reduce_max_concurrency, cap),
            )
        if settings.task_visibility_timeout_s is not None:
            if not local:
                raise ValueError("task_visibility_timeout_s is a local-stage setting; the cloud derives it")
            push = replace(push, visibility_timeout_s=settings.task_visibility_timeout_s)
        if settings.reduce_visibility_timeout_s is not None:
            if not local:
                raise ValueError("reduce_visibility_timeout_s is a local-stage setting; the cloud derives it")
            push = replace(push, reduce_visibility_timeout_s=settings.reduce_visibility_timeout_s)
        self.push_settings = push

        access_logs = None if local else AccessLogBucket(self, "AccessLogs", removal_policy=stateful)
        self.ledger = LedgerTable(self, "Ledger", removal_policy=stateful)
        self.companies = ItemSourceTable(
            self, "Companies", partition_key=source_partition_key(declared, COMPANIES_ROLE), removal_policy=stateful
        )
        self.push_queue = PushQueue(
            self,
            "PushQueue",
            visibility_timeout=Duration.seconds(push.visibility_timeout_s),
            reduce_visibility_timeout=Duration.seconds(push.reduce_visibility_timeout_s),
            max_receive_count=push.max_receive_count,
            dead_letter_visibility_timeout=Duration.seconds(VISIBILITY_FACTOR * DEAD_LETTER_TIMEOUT.to_seconds()),
        )
        self.reports = Reports(
            self,
            "Reports",
            sender=settings.ses_sender,
            expiry_days=settings.intermediate_expiry_days,
            server_access_logs_bucket=access_logs.bucket if access_logs else None,
            removal_policy=stateful,
        )
        self.signing_secret = SigningSecret(self, "Signing")
        defaults = FunctionDefaults(
            code=code_asset(settings.repo_root),
            layers=self._layers(settings),
            environment={
                contract.POWERTOOLS_SERVICE_NAME: contract.POWERTOOLS_SERVICE,
                contract.POWERTOOLS_METRICS_NAMESPACE: contract.METRIC_NAMESPACE,
                contract.LOG_LEVEL: settings.log_level,
                # The emulator has no X-Ray.
                **({contract.POWERTOOLS_TRACE_DISABLED: "true"} if local else {}),
            },
            tracing=not local,
        )

        self.network: Network | None = None
        self.scores: ScoresService | None = None
        if settings.local_services is not None:
            queue_service_url = settings.local_services.queue
            forwarder_network: dict[str, Any] = {}
        else:
            assert access_logs is not None
            self.network = Network(self, "Network", flow_logs_bucket=access_logs.bucket)
            self.scores = self._scores_service(settings, self.network, access_logs)
            queue_service_url = self.scores.queue_url
            forwarder_network = {"vpc": self.network.vpc, "vpc_subnets": self.network.private_subnets}

        pushing: dict[str, Any] = {
            "defaults": defaults,
            "push_queue": self.push_queue,
            "ledger_table": self.ledger.table,
            "reports_bucket": self.reports.bucket,
            "signing_secret": self.signing_secret.secret,
            "queue_service_url": queue_service_url,
        }
        self.forwarder = Forwarder(
            self, "Forwarder", name="forwarder", consumer=push.tasks, **pushing, **forwarder_network
        )
        if forwarder_network:
            # The reducer shares the forwarder's security group: the one peer the queue service admits.
            forwarder_network["security_groups"] = self.forwarder.function.connections.security_groups
        self.reducer = Forwarder(self, "Reducer", name="reducer", consumer=push.reduces, **pushing, **forwarder_network)
        if self.scores is not None:
            self.scores.allow_queue_access_from(self.forwarder.function)
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
            jobs=declared,
            push_queue=self.push_queue,
            ledger_table=self.ledger.table,
            reports_bucket=self.reports.bucket,
            source_tables={COMPANIES_ROLE: self.companies.table},
        )
        self.sweeper = Sweeper(
            self,
            "Sweeper",
            defaults=defaults,
            push_queue=self.push_queue,
            ledger_table=self.ledger.table,
            splitter_function=self.splitter.function,
        )
        self.monitoring: Monitoring | None = None
        if self.scores is not None:
            self.monitoring = Monitoring(
                self,
                "Monitoring",
                jobs=declared,
                push_queue=self.push_queue,
                forwarder=self.forwarder.function,
                reducer=self.reducer.function,
                live_target_group=self.scores.live.target_group,
                queue_target_group=self.scores.queue.target_group,
                alarm_email=settings.alarm_email,
            )

        self._pin_stateful(access_logs)
        self._acknowledge_grant_wildcards()
        self._outputs()

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

    def _scores_service(self, settings: StageSettings, network: Network, access_logs: AccessLogBucket) -> ScoresService:
        common = {
            contract.COMPANIES_TABLE: self.companies.table.table_name,
            contract.SCORE_WORK_MS: str(settings.score_work_ms),
        }
        scores = ScoresService(
            self,
            "Scores",
            vpc=network.vpc,
            subnets=network.private_subnets,
            image_directory=settings.repo_root,
            live_environment=common,
            queue_environment={
                **common,
                contract.LEDGER_TABLE: self.ledger.table.table_name,
                contract.REPORTS_BUCKET: self.reports.bucket.bucket_name,
                contract.SIGNING_SECRET_ARN: self.signing_secret.secret.secret_arn,
                contract.SES_SENDER: settings.ses_sender,
            },
            domain=settings.domain,
            access_logs_bucket=access_logs.bucket,
        )
        live_role, queue_role = scores.live.task_role, scores.queue.task_role
        self.companies.table.grant_read_data(live_role)
        self.companies.table.grant_read_write_data(queue_role)
        self.ledger.table.grant_read_write_data(queue_role)
        self.reports.bucket.grant_read_write(queue_role)
        self.reports.email_identity.grant_send_email(queue_role)
        self.signing_secret.secret.grant_read(queue_role)
        return scores

    def _pin_stateful(self, access_logs: AccessLogBucket | None) -> None:
        ids = PINNED_LOGICAL_IDS
        pin_logical_id(self.ledger.table, ids["ledger"])
        pin_logical_id(self.companies.table, ids["companies"])
        pin_logical_id(self.push_queue.queue, ids["task_queue"])
        pin_logical_id(self.push_queue.reduce_queue, ids["reduce_queue"])
        pin_logical_id(self.push_queue.dead_letter_queue, ids["dead_letter_queue"])
        pin_logical_id(self.reports.bucket, ids["reports_bucket"])
        pin_logical_id(self.signing_secret.secret, ids["signing_secret"])
        if access_logs is not None:
            pin_logical_id(access_logs.bucket, ids["access_logs_bucket"])

    def _acknowledge_grant_wildcards(self) -> None:
        """The wildcards CDK's `grant_*` methods write, acknowledged where they occur."""
        ids = PINNED_LOGICAL_IDS
        table_indexes = f"AwsSolutions-IAM5[Resource::<{ids['ledger']}.Arn>/index/*]"
        bucket = ids["reports_bucket"]

        def prefix(p: str) -> str:
            return f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/{p}*]"

        reason_index = "The ledger grant covers its indexes: the one index (runs-by-job) lists a job's runs."
        reason_prefix = (
            "Objects are addressed by run and task ids under a fixed key prefix of the reports bucket; "
            "the grant is scoped to that prefix."
        )
        reason_s3_actions = (
            "CDK's S3 grant action groups (GetObject*, GetBucket*, List*, DeleteObject*, Abort*) on the "
            "reports bucket only, scoped to a key prefix where the code allows it."
        )
        s3_groups = {
            "read": ["s3:GetObject*", "s3:GetBucket*", "s3:List*"],
            "put": ["s3:Abort*"],
            "read_write": ["s3:GetObject*", "s3:GetBucket*", "s3:List*", "s3:DeleteObject*", "s3:Abort*"],
        }

        def actions(group: str) -> list[str]:
            return [f"AwsSolutions-IAM5[Action::{a}]" for a in s3_groups[group]]

        for consumer in (self.forwarder, self.reducer, self.dead_letter, self.splitter, self.sweeper):
            acknowledge(consumer, reason_index, table_indexes)
        acknowledge(self.forwarder, reason_prefix, prefix("claims/"))
        acknowledge(self.forwarder, reason_s3_actions, *actions("read"))
        acknowledge(self.splitter, reason_prefix, prefix("claims/"))
        acknowledge(self.splitter, reason_s3_actions, *actions("put"))
        acknowledge(self.dead_letter, reason_prefix, prefix("quarantine/"))
        acknowledge(self.dead_letter, reason_s3_actions, *actions("put"))
        if self.scores is not None:
            queue_role = self.scores.queue.task_role
            acknowledge(queue_role, reason_index, table_indexes)
            acknowledge(
                queue_role,
                "The queue service writes and reads every report file of every run "
                "(reports/<job>/<run>/...) and reads claim-checked items: the whole reports bucket.",
                prefix(""),
            )
            acknowledge(queue_role, reason_s3_actions, *actions("read_write"))

    def _outputs(self) -> None:
        values = {
            "TaskQueueUrl": self.push_queue.queue.queue_url,
            "DeadLetterQueueUrl": self.push_queue.dead_letter_queue.queue_url,
            "LedgerTable": self.ledger.table.table_name,
            "CompaniesTable": self.companies.table.table_name,
            "ReportsBucket": self.reports.bucket.bucket_name,
            "SplitterFunctionName": self.splitter.function.function_name,
            "ForwarderFunctionName": self.forwarder.function.function_name,
            "DeadLetterFunctionName": self.dead_letter.function.function_name,
            "SweeperFunctionName": self.sweeper.function.function_name,
            "SigningSecretArn": self.signing_secret.secret.secret_arn,
            "ReduceQueueUrl": self.push_queue.reduce_queue.queue_url,
            "ReduceForwarderFunctionName": self.reducer.function.function_name,
        }
        if self.scores is not None and self.monitoring is not None:
            values |= {
                "LiveServiceUrl": self.scores.live_url,
                "QueueServiceUrl": self.scores.queue_url,
                "DashboardName": self.monitoring.dashboard.dashboard_name,
                "AlarmTopicArn": self.monitoring.topic.topic_arn,
            }
        expected = contract.LOCAL_OUTPUTS if self.scores is None else contract.CLOUD_OUTPUTS
        if tuple(values) != expected:
            raise AssertionError(f"stack outputs {list(values)} differ from the contract {list(expected)}")
        for key, value in values.items():
            CfnOutput(self, key, value=value)
