"""Load shedding: a service that says "not now" pauses every job's pushes to it until then.

A 429 or 503 whose `Retry-After` is at least the service's `shed_after_s` (default 60 s), or
any answer carrying the service's declared `shed_header`, asks the platform to stop pushing
to it until that time. The forwarder that sees it records the time on the service's own
ledger item (`SVC#<service>`, sk `SHED`: one conditional write per shed answer, only when the
time is later than the one recorded, so a flood of identical answers writes once and a write
applied twice leaves the same item), and re-sends the task to arrive then, uncounted (within
the job's `throttle_budget_s`, as any throttled push).

Every forwarder checks the mark before pushing a batch (`ServiceWaits.until`: one eventually
consistent read per service per `ttl_s`, 2 s, per forwarder instance; reads, not writes, so no
hot key: 1,000 forwarders read it 500 times a second, a sixth of a partition's read capacity).
While it holds, a task to that service is re-sent to arrive when it ends (SQS delays up to
15 minutes at a time) without a push and without counting; `status` and the console show the
service as "asked to wait until T".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from microprocess.declarations import ServiceDeclaration
from microprocess.pipeline.push import PushResult

log = logging.getLogger(__name__)

#: Must match microprocess.control.share.SERVICE_PK_PREFIX (a test checks).
SERVICE_PK_PREFIX = "SVC#"
SHED_SK = "SHED"
#: The longest a service may ask every job to wait, s (a day): a longer ask is taken as a day.
MAX_SHED_S = 86_400.0
SHED_STATUSES = frozenset({429, 503})


def shed_seconds(service: ServiceDeclaration, result: PushResult) -> float | None:
    """How long `result` asks every job to wait before pushing to `service` again, s; None when
    it does not shed load (an ordinary 429/503 with a short `Retry-After` slows this task only)."""
    if result.shed_after_s is not None:
        return min(result.shed_after_s, MAX_SHED_S)
    after = result.retry_after_s
    if result.status in SHED_STATUSES and after is not None and after >= service.shed_after_s:
        return min(after, MAX_SHED_S)
    return None


def describe_wait(until: float) -> str:
    """`asked to wait until 2026-12-07 04:12:00 UTC`."""
    return f"asked to wait until {datetime.fromtimestamp(until, UTC):%Y-%m-%d %H:%M:%S} UTC"


class ServiceWaits:
    """The services' shedding marks in the ledger table, cached per process for `ttl_s`.

    Args:
        dynamodb: a boto3 DynamoDB client (or a callable returning one: the ledger's, lazily).
        table: the ledger table's name.
        ttl_s: how long a read is trusted, s.
        clock: epoch seconds.
    """

    def __init__(
        self,
        dynamodb: Any | Callable[[], Any],
        table: str,
        *,
        ttl_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._dynamodb, self.table, self.ttl_s, self.clock = dynamodb, table, ttl_s, clock
        self._cache: dict[str, tuple[float, float | None]] = {}  # service -> (read at, until)
        self._lock = threading.Lock()

    @property
    def dynamodb(self) -> Any:
        return self._dynamodb() if callable(self._dynamodb) else self._dynamodb

    @staticmethod
    def key(service: str) -> dict[str, Any]:
        return {"pk": {"S": f"{SERVICE_PK_PREFIX}{service}"}, "sk": {"S": SHED_SK}}

    def until(self, service: str, *, fresh: bool = False) -> float | None:
        """The time (epoch s) until which `service` asked every job to wait; None when it did not,
        or that time has passed."""
        until = self.asked_until(service, fresh=fresh)
        return until if until is not None and until > self.clock() else None

    def asked_until(self, service: str, *, fresh: bool = False) -> float | None:
        """The end (epoch s) of the latest wait `service` asked for, passed or not; None when it
        never asked (the sweeper counts a run's quiet time from the end of its service's wait)."""
        now = self.clock()
        with self._lock:
            cached = self._cache.get(service)
        if cached is None or fresh or now - cached[0] >= self.ttl_s:
            item = self.dynamodb.get_item(TableName=self.table, Key=self.key(service)).get("Item") or {}
            until = float(item["until"]["N"]) if "until" in item else None
            with self._lock:
                self._cache[service] = (now, until)
            cached = (now, until)
        return cached[1]

    def ask_to_wait(self, service: str, seconds: float, why: str) -> float:
        """Record that `service` asked every job to wait `seconds` from now; returns until when.
        A later time already recorded stays (the condition); written twice, the same item."""
        until = round(self.clock() + seconds, 3)
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key=self.key(service),
                UpdateExpression="SET #until = :until, #why = :why",
                ConditionExpression="attribute_not_exists(#until) OR #until < :until",
                ExpressionAttributeNames={"#until": "until", "#why": "why"},
                ExpressionAttributeValues={":until": {"N": repr(until)}, ":why": {"S": why[:500]}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            return self.until(service, fresh=True) or until  # a later wait is recorded already
        with self._lock:
            self._cache[service] = (self.clock(), until)
        log.warning("service %s sheds load: %s (%s)", service, describe_wait(until), why)
        return until

    def why(self, service: str) -> str:
        item = self.dynamodb.get_item(TableName=self.table, Key=self.key(service)).get("Item") or {}
        return str(item.get("why", {}).get("S", ""))


class ShedGate:
    """The forwarder's shedding gate: is a service asking every job to wait, and did an answer ask it.

    Args:
        waits: the services' shedding marks.
        services: the declared services, by name (a service not declared has the defaults).
    """

    def __init__(self, waits: ServiceWaits, services: Any) -> None:
        self.waits, self.services = waits, services

    def _service(self, name: str) -> ServiceDeclaration:
        if name in self.services:
            return self.services.get(name)  # type: ignore[no-any-return]
        return ServiceDeclaration(name=name, url="https://undeclared.invalid")

    def wait_s(self, service: str) -> float | None:
        """Seconds left of the service's ask to wait (None: it is not asking); a failed read is
        taken as no ask (the push goes: the service answers for itself)."""
        try:
            until = self.waits.until(service)
        except (ClientError, BotoCoreError):
            log.exception("could not read the shedding mark of %s; pushing", service)
            return None
        return None if until is None else max(until - self.waits.clock(), 0.0)

    def sheds(self, service: str, result: PushResult) -> bool:
        """`result` asks every job to wait (a signal of its own to the adaptive controller, not throttling)."""
        return shed_seconds(self._service(service), result) is not None

    def observe(self, service: str, result: PushResult) -> float | None:
        """When `result` sheds load: record the ask for every job and return its seconds; else None.
        A failed write is logged: this task still waits (the next shed answer records it)."""
        seconds = shed_seconds(self._service(service), result)
        if seconds is None:
            return None
        why = f"HTTP {result.status} asking to wait {seconds:.0f} s"
        try:
            self.waits.ask_to_wait(service, seconds, why)
        except (ClientError, BotoCoreError):
            log.exception("could not record that %s sheds load (%s)", service, why)
        return seconds
