"""The composition root of the Lambda functions: settings → clients → core objects.

Built once per execution environment (module-level caches), so warm invocations reuse
clients, connections and the ledger's epoch cache. Handlers call one function here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any, TypeVar

import boto3
from botocore.config import Config

from microprocess.chaos.faults import FaultInjector, load_faults
from microprocess.declarations import get_declarations
from microprocess.ledger import Ledger
from microprocess.pipeline.deadletter import DeadLetterHandler
from microprocess.pipeline.forwarder import Forwarder
from microprocess.pipeline.metrics import InvocationMetrics
from microprocess.pipeline.push import HttpPusher, SecretCache
from microprocess.pipeline.queue import QueueSender
from microprocess.pipeline.settings import get_settings
from microprocess.pipeline.shedding import ServiceWaits, ShedGate
from microprocess.pipeline.splitter import Splitter
from microprocess.pipeline.sweeper import Sweeper
from microprocess.reduce import PlatformReducer

_CONFIG = Config(max_pool_connections=50, retries={"mode": "standard", "max_attempts": 5})


@cache
def client(service: str) -> Any:
    return boto3.client(service, config=_CONFIG)  # type: ignore[call-overload]


@lru_cache(maxsize=1)
def faults() -> FaultInjector | None:
    return load_faults(get_settings().microprocess_chaos)


@lru_cache(maxsize=1)
def ledger() -> Ledger:
    injector = faults()
    if injector is not None:  # chaos: some writes applied, then reported failed (the SDK retries them)
        injector.install_ambiguous_writes(client("dynamodb"))
    return Ledger(
        get_settings().ledger_table,
        client=client("dynamodb"),
        crash_hook=injector.maybe_crash if injector else None,
    )


@cache
def _sender(queue_url: str) -> QueueSender:
    return QueueSender(client=client("sqs"), queue_url=queue_url)


def sender_for(job: str) -> QueueSender:
    """The sender of `job`'s tasks: the job's own task queue (`JOB_QUEUES`)."""
    return _sender(get_settings().queue_url_for(job))


def reduce_sender() -> QueueSender:
    """The sender of reduce parts, finalizes and completion callbacks: the reduce queue."""
    s = get_settings()
    url = s.reduce_queue_url or s.task_queue_url  # one queue for everything: tests and single-queue tools
    if not url:
        raise RuntimeError("no reduce queue: set REDUCE_QUEUE_URL")
    return _sender(url)


@cache
def pusher_for(service: str) -> HttpPusher:
    """The signed HTTP pusher to `service`'s queue endpoint (`SERVICE_ENDPOINTS`), one per service."""
    s = get_settings()
    endpoint = s.endpoint_for(service)
    secret = SecretCache(
        secret=s.signing_secret, secret_arn=endpoint.secret_arn, client=lambda: client("secretsmanager")
    )
    services = get_declarations().services
    shed_header = services.get(service).shed_header if service in services else None
    return HttpPusher(endpoint.url, secret, shed_header=shed_header)


R = TypeVar("R")


@lru_cache(maxsize=1)
def emitter() -> InvocationMetrics:
    """The functions' metrics emitter (one per process): counts buffered until `flush_metrics`."""
    return InvocationMetrics()


def metrics_flushed(handler: Callable[..., R]) -> Callable[..., R]:
    """Decorates a Lambda handler: the invocation's metrics are written when it returns or raises."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        try:
            return handler(*args, **kwargs)
        finally:
            emitter().flush()

    return wrapper


@lru_cache(maxsize=1)
def platform_reducer() -> PlatformReducer | None:
    """The built-in reduce (jobs with `reduce = "platform"`); None without a reports bucket."""
    s = get_settings()
    if not s.reports_bucket:
        return None
    return PlatformReducer(
        ledger=ledger(),
        s3=client("s3"),
        ses=client("ses"),
        bucket=s.reports_bucket,
        completion_sender=reduce_sender(),
        email_sender=s.ses_sender,
    )


@lru_cache(maxsize=1)
def forwarder() -> Forwarder:
    s = get_settings()
    return Forwarder(
        jobs=get_declarations().jobs,
        ledger=ledger(),
        pusher_for=pusher_for,
        sqs=client("sqs"),
        s3=client("s3"),
        job_queue_urls=s.job_queue_urls,
        task_queue_url=s.task_queue_url,
        dead_letter_queue_url=s.dead_letter_queue_url,
        sender_for=sender_for,
        reduce_sender=reduce_sender(),
        reducer=platform_reducer(),
        claims_bucket=s.reports_bucket,
        faults=faults(),
        emit=emitter(),
        defer_grace_s=s.defer_grace_s,
        shed_gate=ShedGate(service_waits(), get_declarations().services),
    )


def splitter(function_name: str) -> Splitter:
    def continue_with(event: dict[str, Any]) -> None:
        client("lambda").invoke(FunctionName=function_name, InvocationType="Event", Payload=json.dumps(event).encode())

    s = get_settings()
    return Splitter(
        settings=s,
        jobs=get_declarations().jobs,
        ledger=ledger(),
        sender_for=sender_for,
        reduce_sender=reduce_sender(),
        s3=client("s3"),
        dynamodb=client("dynamodb"),
        continue_with=continue_with,
        faults=faults(),
        emit=emitter(),
    )


@lru_cache(maxsize=1)
def dead_letter() -> DeadLetterHandler:
    s = get_settings()
    return DeadLetterHandler(
        jobs=get_declarations().jobs,
        ledger=ledger(),
        s3=client("s3"),
        bucket=s.reports_bucket,
        sender=reduce_sender(),
        emit=emitter(),
    )


def service_waits() -> ServiceWaits:
    """The services' shedding marks, read through the ledger's client (`pipeline.shedding`)."""
    return ServiceWaits(lambda: ledger().client, get_settings().ledger_table)


def sweeper() -> Sweeper:
    s = get_settings()

    def restart_splitter(event: dict[str, Any]) -> None:
        if not s.splitter_function_name:
            raise RuntimeError("the sweeper needs SPLITTER_FUNCTION_NAME to restart a stuck split")
        client("lambda").invoke(
            FunctionName=s.splitter_function_name, InvocationType="Event", Payload=json.dumps(event).encode()
        )

    return Sweeper(
        jobs=get_declarations().jobs,
        ledger=ledger(),
        sender=reduce_sender(),
        restart_splitter=restart_splitter,
        stuck_after_s=s.stuck_after_s,
        reduce_timeout_s=s.reduce_timeout_s,
        repair_budget_s=s.repair_budget_s,
        emit=emitter(),
        waits=service_waits(),
    )


def reset() -> None:
    """Forget every cached setting, client and core object (tests; a changed environment)."""
    get_settings.cache_clear()
    for cached in (faults, ledger, _sender, pusher_for, platform_reducer, forwarder, dead_letter):
        cached.cache_clear()
    if hasattr(client, "cache_clear"):  # not while a test stands in for it
        client.cache_clear()
