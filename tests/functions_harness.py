"""Test harness for the Lambda functions: moto resources, a real HTTP service stand-in,
SQS records in the shape the event source delivers, and an event-source driver."""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from microprocess.declarations import JobDeclaration, JobRegistry, declare
from microprocess.ledger import Ledger, ledger_table_definition
from microprocess.pipeline.forwarder import Forwarder
from microprocess.pipeline.push import HttpPusher
from microprocess.pipeline.queue import QueueSender
from microprocess.pipeline.settings import RuntimeSettings
from microprocess.pipeline.splitter import Splitter
from microprocess.service.signing import SignatureError, verify
from tests.declared import CREDIT_SCORES

EVENTS = Path(__file__).parent / "events"
SECRET = "test-signing-secret"
JOB = declare(
    **{**CREDIT_SCORES.model_dump(), "shard_count": 4, "counter_count": 4, "max_attempts": 3, "item_index": True}
)
REGISTRY = JobRegistry([JOB])


def load_event(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


#: The receipt handles of records made by `sqs_record` (not given out by SQS, but valid in a test).
HAND_MADE_HANDLES: set[str] = set()


def sqs_record(body: str, *, receive_count: int = 1, message_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """An SQS event-source record as AWS sends it (from tests/events/sqs_record.json)."""
    rec = copy.deepcopy(load_event("sqs_record.json"))
    rec["body"] = body
    rec["messageId"] = message_id or f"m-{random.random():.12f}"
    rec["attributes"]["ApproximateReceiveCount"] = str(receive_count)
    rec.update(extra)
    HAND_MADE_HANDLES.add(rec["receiptHandle"])
    return rec


@dataclass
class Behaviour:
    """What the stand-in service answers for one company id (default: 200 with a score)."""

    status: int = 200
    retry_after: str | None = None
    delay_s: float = 0.0
    body: bytes | None = None


@dataclass
class FakeService:
    """A real HTTP server on loopback that checks signatures like the queue service."""

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    bad_signatures: int = 0
    #: What a completion callback (kind "completion") is answered with.
    completion_status: int = 200

    def start(self) -> None:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    verify(dict(self.headers.items()), raw, "POST", self.path, SECRET)
                except SignatureError:
                    service.bad_signatures += 1
                    return self._send(401, b'{"detail":"bad signature"}')
                payload = json.loads(raw)
                service.calls.append(
                    {"path": self.path, "payload": payload, "key": self.headers.get("Idempotency-Key")}
                )
                if payload.get("kind", "completion") == "completion":  # the callback: {run_id, job, status, ...}
                    return self._send(service.completion_status, b"{}")
                if payload["kind"] == "reduce-part":
                    return self._send(200, json.dumps({"shard": payload["shard"]}).encode())
                if payload["kind"] == "finalize":
                    uri = f"s3://reports/reports/{payload['job']}/{payload['run_id']}/"
                    return self._send(200, json.dumps({"report_uri": uri, "summary": {"ok": True}}).encode())
                company = str(payload["item"].get("company_id"))
                b = service.behaviours.get(company, Behaviour())
                if b.delay_s:
                    time.sleep(b.delay_s)
                body = b.body if b.body is not None else json.dumps({"company_id": company, "score": 700}).encode()
                if b.status != 200 and b.body is None:
                    body = json.dumps({"detail": f"status {b.status} for {company}"}).encode()
                self._send(b.status, body, b.retry_after)

            def _send(self, status: int, body: bytes, retry_after: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if retry_after:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def task_calls(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["payload"].get("kind") == "task"]


class RecordingSQS:
    """Wraps the SQS client to record visibility changes (backoff) the forwarder asks for, and
    the single messages it sends (re-sends, dead letters) with their delay."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.visibility: list[int] = []
        #: The queue of each visibility change, in the same order.
        self.visibility_queues: list[str] = []
        #: Every `send_message` call's arguments, as asked (the delay included).
        self.sent: list[dict[str, Any]] = []
        #: (queue, delay) of each `send_message_batch` entry sent with a delay.
        self.batch_delays: list[tuple[str, int]] = []
        #: The receipt handles SQS gave out (a hand-made record's is not among them).
        self.handles: set[str] = set()
        #: The errors of `change_message_visibility` calls (a test that expects one clears it).
        self.errors: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def send_message(self, **kw: Any) -> Any:
        """Recorded as asked, then sent without its delay: a test receives it at once (the delay
        itself is asserted from `sent`)."""
        self.sent.append(kw)
        return self.inner.send_message(**{k: v for k, v in kw.items() if k != "DelaySeconds"})

    def send_message_batch(self, **kw: Any) -> Any:
        """Entries with a delay (a stopped run's reduce parts) are recorded in `batch_delays`
        (queue, delay), then sent without it, as `send_message` does."""
        entries = []
        for entry in kw["Entries"]:
            if entry.get("DelaySeconds"):
                self.batch_delays.append((kw["QueueUrl"], entry["DelaySeconds"]))
            entries.append({k: v for k, v in entry.items() if k != "DelaySeconds"})
        return self.inner.send_message_batch(**{**kw, "Entries": entries})

    def receive_message(self, **kw: Any) -> Any:
        resp = self.inner.receive_message(**kw)
        self.handles.update(m["ReceiptHandle"] for m in resp.get("Messages", []))
        return resp

    def change_message_visibility(self, **kw: Any) -> Any:
        """Recorded, then sent; every error reaches the caller and is kept in `errors` (the
        forwarder logs such an error and goes on, so the `stack` fixture fails the test that
        made one). A record made by `sqs_record` carries no receipt handle SQS gave out: its
        change is checked as SQS would (the queue exists, the timeout is whole seconds in
        0..43,200), not sent."""
        self.visibility.append(kw["VisibilityTimeout"])
        self.visibility_queues.append(kw["QueueUrl"])
        try:
            if kw.get("ReceiptHandle") in self.handles:
                return self.inner.change_message_visibility(**kw)
            if kw.get("ReceiptHandle") not in HAND_MADE_HANDLES:
                raise ValueError(f"ReceiptHandle {kw.get('ReceiptHandle')!r} was not given out by SQS")
            timeout = kw["VisibilityTimeout"]
            if not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 <= timeout <= 43_200:
                raise ValueError(f"VisibilityTimeout {timeout!r}: SQS takes whole seconds from 0 to 43,200")
            self.inner.get_queue_attributes(QueueUrl=kw["QueueUrl"], AttributeNames=["QueueArn"])
            return {}
        except Exception as exc:
            self.errors.append(f"change_message_visibility({kw}): {type(exc).__name__}: {exc}")
            raise


@dataclass
class Stack:
    """The resources and core objects of one test, all in moto."""

    ddb: Any
    sqs: RecordingSQS
    s3: Any
    ledger: Ledger
    service: FakeService
    task_queue: str
    dlq: str
    bucket: str
    companies: str
    settings: RuntimeSettings
    sender: QueueSender
    #: The reduce queue: used by the core objects a test builds with `two_queues=True`
    #: (otherwise reduce tasks share the task queue, as with REDUCE_QUEUE_URL unset).
    reduce_queue: str
    reduce_sender: QueueSender
    continuations: list[dict[str, Any]] = field(default_factory=list)
    emitted: list[tuple[str, float, str]] = field(default_factory=list)

    def emit(self, name: str, value: float, job: str, *, run_id: str | None = None) -> None:
        self.emitted.append((name, value, job))

    def metric(self, name: str) -> float:
        return sum(v for n, v, _ in self.emitted if n == name)

    def two_queues(self) -> dict[str, Any]:
        """Keyword arguments that send reduce parts and finalizes to the reduce queue."""
        return {"reduce_sender": self.reduce_sender}

    def forwarder(self, *, two_queues: bool = False, **kw: Any) -> Forwarder:
        if two_queues:
            kw |= self.two_queues()
        return Forwarder(
            jobs=kw.pop("jobs", REGISTRY),
            ledger=kw.pop("ledger", self.ledger),
            pusher=HttpPusher(self.service.url, lambda: SECRET),
            sqs=self.sqs,
            s3=self.s3,
            task_queue_url=self.task_queue,
            dead_letter_queue_url=self.dlq,
            sender=self.sender,
            emit=self.emit,
            run_cache_ttl_s=kw.pop("run_cache_ttl_s", 0.0),
            rng=random.Random(1),
            **kw,
        )

    def splitter(self, *, jobs: JobRegistry = REGISTRY, two_queues: bool = False, **kw: Any) -> Splitter:
        if two_queues:
            kw["reduce_sender"] = self.reduce_sender
        return Splitter(
            settings=kw.pop("settings", self.settings),
            jobs=jobs,
            ledger=kw.pop("ledger", self.ledger),
            sender=self.sender,
            s3=kw.pop("s3", self.s3),
            dynamodb=kw.pop("dynamodb", self.ddb),
            continue_with=self.continuations.append,
            emit=self.emit,
            # the unit tests name runs freely ("r1"); the deployed splitter's rule is tested on its own
            run_id_rule=kw.pop("run_id_rule", None),
            **kw,
        )

    def split(self, event: dict[str, Any], *, jobs: JobRegistry = REGISTRY, **kw: Any) -> dict[str, Any]:
        """Run the splitter and, like Lambda's async invokes, every continuation it asks for."""
        result = self.splitter(jobs=jobs, **kw).handle(event, lambda: 900_000)
        while self.continuations:
            result = self.splitter(jobs=jobs, **kw).handle(self.continuations.pop(0), lambda: 900_000)
        return result

    def receive(self, queue_url: str, max_messages: int = 10) -> list[dict[str, Any]]:
        resp = self.sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=max_messages,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        records = []
        # the event source names the queue by ARN: arn:aws:sqs:<region>:<account>:<name>
        account, name = queue_url.rstrip("/").split("/")[-2:]
        arn = f"arn:aws:sqs:us-east-1:{account}:{name}"
        for m in resp.get("Messages", []):
            attrs = {
                k: {"stringValue": v["StringValue"], "dataType": v["DataType"]}
                for k, v in m.get("MessageAttributes", {}).items()
            }
            record = sqs_record(
                m["Body"],
                receive_count=int(m["Attributes"]["ApproximateReceiveCount"]),
                message_id=m["MessageId"],
                receiptHandle=m["ReceiptHandle"],
                messageAttributes=attrs,
                eventSourceARN=arn,
            )
            if "MessageGroupId" in m["Attributes"]:  # a fair queue's record carries its tenant
                record["attributes"]["MessageGroupId"] = m["Attributes"]["MessageGroupId"]
            records.append(record)
        return records

    def depth(self, queue_url: str) -> int:
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def drive(
        self,
        handler: Callable[[dict[str, Any]], dict[str, Any]],
        queue_url: str,
        max_rounds: int = 500,
        timeout_s: float = 60.0,
    ) -> int:
        """Act as the SQS event source: deliver batches, delete what succeeded, make the
        retried ones visible again at once (the backoff itself is asserted separately).
        Fails when no message has been deliverable for `timeout_s`, rather than wait for
        messages that a handler hid in flight."""
        rounds = 0
        deadline = time.monotonic() + timeout_s
        while rounds < max_rounds:
            records = self.receive(queue_url)
            if not records:
                depth = self.depth(queue_url)
                if depth == 0:
                    return rounds
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"queue {queue_url} still holds {depth} messages in flight and none came back for "
                        f"{timeout_s:g} s: a handler hid them instead of finishing them or reporting them failed"
                    )
                time.sleep(0.05)
                continue
            deadline = time.monotonic() + timeout_s
            rounds += 1
            self.settle(queue_url, records, handler({"Records": records}))
        raise AssertionError(f"queue {queue_url} not drained after {max_rounds} batches")

    def settle(self, queue_url: str, records: list[dict[str, Any]], result: dict[str, Any] | None = None) -> None:
        """What the event source does after an invocation that returned `result`: delete the records
        that succeeded, make the reported failures visible again at once. `result` None: the records
        were only looked at (no invocation): all of them come back at once, not after their
        visibility timeout (30 s here)."""
        failures = None if result is None else {f["itemIdentifier"] for f in result["batchItemFailures"]}
        for r in records:
            if failures is None or r["messageId"] in failures:
                self.sqs.inner.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=r["receiptHandle"], VisibilityTimeout=0
                )
            else:
                self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=r["receiptHandle"])


def seed_companies(ddb: Any, table: str, n: int) -> list[dict[str, Any]]:
    items = [{"company_id": f"C{i:07d}", "name": f"Company {i}", "employees": i % 50} for i in range(n)]
    for start in range(0, n, 25):
        ddb.batch_write_item(
            RequestItems={
                table: [
                    {
                        "PutRequest": {
                            "Item": {k: ({"S": v} if isinstance(v, str) else {"N": str(v)}) for k, v in it.items()}
                        }
                    }
                    for it in items[start : start + 25]
                ]
            }
        )
    return items


@pytest.fixture
def stack(aws: None) -> Iterator[Stack]:
    region = "us-east-1"
    ddb = boto3.client("dynamodb", region_name=region)
    sqs = boto3.client("sqs", region_name=region)
    s3 = boto3.client("s3", region_name=region)
    ddb.create_table(**ledger_table_definition("ledger"))
    ddb.create_table(
        TableName="companies",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "company_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "company_id", "KeyType": "HASH"}],
    )
    dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    task_queue = sqs.create_queue(QueueName="tasks", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    reduce_queue = sqs.create_queue(QueueName="reduces", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    s3.create_bucket(Bucket="reports")
    service = FakeService()
    service.start()
    settings = RuntimeSettings(
        ledger_table="ledger",
        task_queue_url=task_queue,
        dead_letter_queue_url=dlq,
        source_tables='{"companies": "companies"}',
        reports_bucket="reports",
        queue_service_url=service.url,
        signing_secret=SECRET,
    )
    recording = RecordingSQS(sqs)
    st = Stack(
        ddb=ddb,
        sqs=recording,
        s3=s3,
        ledger=Ledger("ledger", client=ddb, rng=random.Random(5)),
        service=service,
        task_queue=task_queue,
        dlq=dlq,
        bucket="reports",
        companies="companies",
        settings=settings,
        sender=QueueSender(client=recording, queue_url=task_queue, threads=2),
        reduce_queue=reduce_queue,
        reduce_sender=QueueSender(client=recording, queue_url=reduce_queue, threads=2),
    )
    try:
        yield st
    finally:
        service.stop()
    assert not recording.errors, (
        f"an invalid visibility change (the forwarder logged it and went on): {recording.errors}"
    )


def job_with(**changes: Any) -> tuple[JobDeclaration, JobRegistry]:
    job = declare(**{**JOB.model_dump(), **changes})
    return job, JobRegistry([job])
