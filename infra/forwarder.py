"""The forwarder: the task queue's consumer, pushing each task to the queue service."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra import contract
from infra.lambda_function import FunctionDefaults, MicroprocessFunction
from infra.push_queue import PushQueue
from infra.push_settings import PushSettings

#: How long the event source waits to fill a batch before invoking anyway.
BATCHING_WINDOW = Duration.seconds(1)
#: Key prefix of claim-checked items (oversized items the splitter put in S3).
CLAIMS_PREFIX = "claims/"


class Forwarder(Construct):
    """The forwarder function and its SQS event source (partial batch responses).

    It may read and write the ledger, consume the task queue (including changing a
    message's visibility for backoff), send reduce tasks to the task queue, send malformed
    records to the DLQ, read claim-checked items and the signing secret.

    Args:
        defaults: the stage's function defaults.
        push_queue: the task queue and DLQ.
        settings: batch size, concurrency cap and timeout derived from the job declarations.
        ledger_table: the run ledger.
        reports_bucket: holds claim-checked items under `claims/`.
        signing_secret: the HMAC key for signing pushes.
        queue_service_url: base URL of the scores-queue service.
        vpc, vpc_subnets, security_groups: where the function runs (cloud: next to the
            internal load balancer of the queue service).

    Attributes:
        function: the `lambda_.Function`.
        event_source: the `SqsEventSource` on the task queue.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        defaults: FunctionDefaults,
        push_queue: PushQueue,
        settings: PushSettings,
        ledger_table: dynamodb.ITable,
        reports_bucket: s3.IBucket,
        signing_secret: secretsmanager.ISecret,
        queue_service_url: str,
        vpc: ec2.IVpc | None = None,
        vpc_subnets: ec2.SubnetSelection | None = None,
        security_groups: Sequence[ec2.ISecurityGroup] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        handler = MicroprocessFunction(
            self,
            "Handler",
            name="forwarder",
            defaults=defaults,
            environment={
                contract.LEDGER_TABLE: ledger_table.table_name,
                contract.TASK_QUEUE_URL: push_queue.queue.queue_url,
                contract.DEAD_LETTER_QUEUE_URL: push_queue.dead_letter_queue.queue_url,
                contract.QUEUE_SERVICE_URL: queue_service_url,
                contract.SIGNING_SECRET_ARN: signing_secret.secret_arn,
                contract.REPORTS_BUCKET: reports_bucket.bucket_name,
            },
            timeout=Duration.seconds(settings.forwarder_timeout_s),
            # The forwarder waits on I/O (pushes, DynamoDB); 256 MB is ample, and each second of a
            # batch costs per GB-s: measured by `make bench` (P2).
            memory_size=256,
            description="Pushes queued tasks to the scores-queue service and records their outcomes",
            vpc=vpc,
            vpc_subnets=vpc_subnets,
            security_groups=security_groups,
        )
        self.function = handler.function
        self.event_source = event_sources.SqsEventSource(
            push_queue.queue,
            batch_size=settings.batch_size,
            max_batching_window=BATCHING_WINDOW,
            max_concurrency=settings.max_concurrency,
            report_batch_item_failures=True,
        )
        self.function.add_event_source(self.event_source)
        ledger_table.grant_read_write_data(self.function)
        push_queue.queue.grant_send_messages(self.function)
        push_queue.dead_letter_queue.grant_send_messages(self.function)
        reports_bucket.grant_read(self.function, f"{CLAIMS_PREFIX}*")
        signing_secret.grant_read(self.function)
