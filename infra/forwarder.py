"""A forwarder: a push queue's consumer, pushing each message to the queue service.

Two instances: `forwarder` on the task queue (short timeout) and `reducer` on the reduce
queue (reduce parts and finalizes: a timeout that fits a reduce push), the same code."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra import contract
from infra.lambda_function import FunctionDefaults, MicroprocessFunction
from infra.push_queue import PushQueue
from infra.push_settings import QueueConsumer

#: How long the event source waits to fill a batch before invoking anyway.
BATCHING_WINDOW = Duration.seconds(1)
#: Key prefix of claim-checked items (oversized items the splitter put in S3).
CLAIMS_PREFIX = "claims/"
#: The forwarder functions (folders under `functions/`) and what each consumes.
CONSUMED = {"forwarder": "tasks", "reducer": "reduces"}


class Forwarder(Construct):
    """A forwarder function and its SQS event source (partial batch responses).

    It may read and write the ledger, consume its queue (including changing a message's
    visibility for backoff), send reduce tasks to the reduce queue, send malformed records
    to the DLQ and read the signing secret; the task forwarder may also send to the task
    queue (chaos duplicates) and read claim-checked items.

    Args:
        defaults: the stage's function defaults.
        push_queue: the task queue, the reduce queue and the DLQ.
        consumer: batch size, concurrency cap and timeout derived from the job declarations.
        name: the folder under `functions/`: `forwarder` consumes the task queue,
            `reducer` the reduce queue.
        ledger_table: the run ledger.
        reports_bucket: holds claim-checked items under `claims/`.
        signing_secret: the HMAC key for signing pushes.
        queue_service_url: base URL of the scores-queue service.
        vpc, vpc_subnets, security_groups: where the function runs (cloud: next to the
            internal load balancer of the queue service).

    Attributes:
        function: the `lambda_.Function`.
        queue: the queue it consumes.
        event_source: the `SqsEventSource` on that queue.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        defaults: FunctionDefaults,
        push_queue: PushQueue,
        consumer: QueueConsumer,
        name: str = "forwarder",
        ledger_table: dynamodb.ITable,
        reports_bucket: s3.IBucket,
        signing_secret: secretsmanager.ISecret,
        queue_service_url: str,
        vpc: ec2.IVpc | None = None,
        vpc_subnets: ec2.SubnetSelection | None = None,
        security_groups: Sequence[ec2.ISecurityGroup] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if name not in CONSUMED:
            raise ValueError(f"a forwarder is one of {sorted(CONSUMED)}, not {name!r}")
        tasks = CONSUMED[name] == "tasks"
        queue: sqs.IQueue = push_queue.queue if tasks else push_queue.reduce_queue
        handler = MicroprocessFunction(
            self,
            "Handler",
            name=name,
            defaults=defaults,
            environment={
                contract.LEDGER_TABLE: ledger_table.table_name,
                contract.TASK_QUEUE_URL: push_queue.queue.queue_url,
                contract.REDUCE_QUEUE_URL: push_queue.reduce_queue.queue_url,
                contract.DEAD_LETTER_QUEUE_URL: push_queue.dead_letter_queue.queue_url,
                contract.QUEUE_SERVICE_URL: queue_service_url,
                contract.SIGNING_SECRET_ARN: signing_secret.secret_arn,
                contract.REPORTS_BUCKET: reports_bucket.bucket_name,
            },
            timeout=Duration.seconds(consumer.timeout_s),
            # The forwarder waits on I/O (pushes, DynamoDB); 256 MB is ample, and each second of a
            # batch costs per GB-s: measured by `make bench` (P2).
            memory_size=256,
            description=(
                "Pushes queued tasks to the scores-queue service and records their outcomes"
                if tasks
                else "Pushes queued reduce parts and finalizes to the scores-queue service and ends runs"
            ),
            vpc=vpc,
            vpc_subnets=vpc_subnets,
            security_groups=security_groups,
        )
        self.function = handler.function
        self.queue = queue
        self.event_source = event_sources.SqsEventSource(
            queue,
            batch_size=consumer.batch_size,
            # one reduce task per invocation: nothing to wait for
            max_batching_window=BATCHING_WINDOW if consumer.batch_size > 1 else None,
            max_concurrency=consumer.max_concurrency,
            report_batch_item_failures=True,
        )
        self.function.add_event_source(self.event_source)
        ledger_table.grant_read_write_data(self.function)
        if tasks:
            push_queue.queue.grant_send_messages(self.function)
        push_queue.reduce_queue.grant_send_messages(self.function)
        push_queue.dead_letter_queue.grant_send_messages(self.function)
        if tasks:  # reduce envelopes never carry a claim-checked item
            reports_bucket.grant_read(self.function, f"{CLAIMS_PREFIX}*")
        signing_secret.grant_read(self.function)
