"""A forwarder: one function consuming one or more push queues, pushing each message to its
job's service.

Two instances of the same code: `forwarder` on every job's task queue (one event source per
job, with that job's batch size and concurrency cap) and `reducer` on the reduce queue
(reduce parts and finalizes: a timeout that fits a reduce push; the built-in reduce writes
the report and mails it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ses as ses
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from . import permissions
from .lambda_function import FunctionDefaults, MicroprocessFunction
from .push_queue import PushQueue
from .push_settings import QueueConsumer

#: How long an event source waits to fill a batch before invoking anyway.
BATCHING_WINDOW = Duration.seconds(1)
#: Key prefix of claim-checked items (oversized items the splitter put in S3).
CLAIMS_PREFIX = "claims/"
#: Key prefix of the reports the built-in reduce writes (`reports/<job>/<run>/...`).
REPORTS_PREFIX = "reports/"
#: The forwarder functions (folders under `functions/`) and what each consumes.
CONSUMED = {"forwarder": "tasks", "reducer": "reduces"}


class Forwarder(Construct):
    """A forwarder function and one SQS event source per queue it consumes (partial batch
    responses, each source with its own batch size and concurrency cap).

    It may read and write the ledger, consume its queues (including changing a message's
    visibility for backoff), send reduce tasks to the reduce queue, send malformed records
    to the DLQ and read the services' signing secrets. The task forwarder may also send to
    the task queues (chaos duplicates) and read claim-checked items; the reducer may write
    and read the built-in reports (`reports/`) and mail them.

    Args:
        defaults: the stage's function defaults (the pipeline's shared environment included).
        name: the folder under `functions/`: `forwarder` consumes the task queues,
            `reducer` the reduce queue.
        sources: the queues it consumes with their event source settings, by label (job name,
            or `reduce`).
        timeout: the function's timeout (the slowest push it makes + overhead).
        push_queue: the task queues, the reduce queue and the DLQ.
        ledger_table: the run ledger.
        reports_bucket: claim-checked items (`claims/`), built-in reports (`reports/`).
        signing_secrets: the HMAC keys of the services it pushes to.
        environment: this function's own variables (`SERVICE_ENDPOINTS`, `SES_SENDER`, ...).
        email_identity: the reducer's sender identity (the built-in reduce mails the report).
        vpc, vpc_subnets, security_groups: where the function runs (cloud, when a service is
            reachable only inside a VPC).
        tracing: X-Ray active tracing (default: the stage's).

    Attributes:
        function: the `lambda_.Function`.
        role: its execution role.
        event_sources: the `SqsEventSource` of each source, by label.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        defaults: FunctionDefaults,
        name: str,
        sources: Mapping[str, tuple[sqs.IQueue, QueueConsumer]],
        timeout: Duration,
        push_queue: PushQueue,
        ledger_table: dynamodb.ITable,
        reports_bucket: s3.IBucket,
        signing_secrets: Sequence[secretsmanager.ISecret],
        environment: Mapping[str, str],
        email_identity: ses.IEmailIdentity | None = None,
        vpc: ec2.IVpc | None = None,
        vpc_subnets: ec2.SubnetSelection | None = None,
        security_groups: Sequence[ec2.ISecurityGroup] | None = None,
        tracing: bool | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if name not in CONSUMED:
            raise ValueError(f"a forwarder is one of {sorted(CONSUMED)}, not {name!r}")
        if not sources:
            raise ValueError(f"the {name} function needs at least one queue to consume")
        tasks = CONSUMED[name] == "tasks"
        handler = MicroprocessFunction(
            self,
            "Handler",
            name=name,
            defaults=defaults,
            environment=environment,
            timeout=timeout,
            # The forwarder waits on I/O (pushes, DynamoDB); 256 MB is ample, and each second of a
            # batch costs per GB-s: measured by `make bench` (P2). The built-in reduce streams.
            memory_size=256 if tasks else 512,
            description=(
                "Pushes queued tasks to their jobs' services and records their outcomes"
                if tasks
                else "Runs reduce parts and finalizes (built in, or pushed to the service) and ends runs"
            ),
            vpc=vpc,
            vpc_subnets=vpc_subnets,
            security_groups=security_groups,
            tracing=tracing,
        )
        self.function = handler.function
        self.role = handler.role
        self.event_sources: dict[str, event_sources.SqsEventSource] = {}
        for label, (queue, consumer) in sources.items():
            source = event_sources.SqsEventSource(
                queue,
                batch_size=consumer.batch_size,
                # one reduce task per invocation: nothing to wait for
                max_batching_window=BATCHING_WINDOW if consumer.batch_size > 1 else None,
                max_concurrency=consumer.max_concurrency,
                report_batch_item_failures=True,
            )
            self.function.add_event_source(source)
            self.event_sources[label] = source
        # Consuming its queues (receive, delete, change visibility) is granted by the event sources.
        permissions.allow_ledger(self.function, ledger_table)
        sends = [push_queue.reduce_queue, push_queue.dead_letter_queue]
        if tasks:  # chaos duplicates re-send a task to its own queue
            sends += list(push_queue.task_queues.values())
            permissions.allow(
                self.function, permissions.GET_OBJECT, [reports_bucket.arn_for_objects(f"{CLAIMS_PREFIX}*")]
            )
        else:
            permissions.allow(
                self.function, permissions.REPORT_OBJECTS, [reports_bucket.arn_for_objects(f"{REPORTS_PREFIX}*")]
            )
            if email_identity is not None:
                email_identity.grant_send_email(self.function)
        permissions.allow(self.function, permissions.SEND_MESSAGE, [queue.queue_arn for queue in sends])
        permissions.allow(self.function, permissions.READ_SECRET, [secret.secret_arn for secret in signing_secrets])
