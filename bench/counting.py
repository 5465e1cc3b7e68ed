"""What one AWS request costs: its service and operation, billed units, and the ledger keys it writes.

Pure functions over the raw HTTP request and response, used by the counting proxy
(`bench.proxy`). The rules are AWS's billing rules:

* **Service**: the credential scope of the SigV4 `Authorization` header
  (`Credential=<key>/<date>/<region>/<service>/aws4_request`).
* **Operation**: `X-Amz-Target` (DynamoDB, SQS JSON, Secrets Manager), the `Action`
  form field (SES, query-protocol SQS), or the REST method and path (S3, Lambda).
* **SQS**: every 64 KB chunk of a request's payload is one billed request (a batch of
  10 small messages is one).
* **DynamoDB**: the `ConsumedCapacity` the emulator returns (the bench starts it with
  `MICROPROCESS_DYNAMODB_CONSUMED_CAPACITY=1`: it reports the units of every request). A failed
  conditional write returns none, yet is billed on AWS: it is computed here as one unit per
  started KB of the item it tried to write (the old item for an update, when the caller asked
  for it back; else 1).
* **S3**: PUT-class (PUT, COPY, POST, LIST) and GET-class requests; DELETE is free.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs

SQS_CHUNK_BYTES = 64 * 1024

DYNAMODB_WRITES = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems", "BatchExecuteStatement"}
)
#: A PartiQL INSERT with its values as parameters (the ledger's task records, `insert_statement`).
_PARTIQL_INSERT = re.compile(r'^\s*INSERT\s+INTO\s+"(?P<table>[^"]+)"\s+VALUE\s+\{(?P<fields>.*)\}\s*$', re.I | re.S)
_PARTIQL_FIELD = re.compile(r"'(?P<name>[^']+)'\s*:\s*\?")
DYNAMODB_READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})
#: S3 operations billed at the PUT rate (PUT, COPY, POST, LIST).
S3_PUT_CLASS = frozenset(
    {
        "PutObject",
        "CopyObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "ListObjectsV2",
        "ListObjects",
        "ListMultipartUploads",
        "ListParts",
        "ListBuckets",
        "CreateBucket",
        "PostObject",
    }
)
#: S3 operations that are free.
S3_FREE = frozenset({"DeleteObject", "DeleteObjects", "AbortMultipartUpload", "DeleteBucket"})

_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/]+/([^/]+)/aws4_request")
_LAMBDA_PATH = re.compile(r"^/\d{4}-\d{2}-\d{2}/functions/([^/]+)/(invocations|configuration)?")


@dataclass(frozen=True)
class Request:
    """One HTTP request as the proxy saw it."""

    method: str
    path: str  # without the query string
    query: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes


@dataclass
class Measured:
    """What one request (with its response) counts for."""

    service: str
    operation: str
    billed_requests: float = 1.0  # SQS: 64 KB chunks; others: 1
    write_units: float = 0.0
    read_units: float = 0.0
    units_computed: bool = False  # True when the units were computed here, not reported by the emulator
    emails: int = 0
    error: str | None = None
    #: (table, key) of every item the request writes or tries to write, with its share of the units.
    key_writes: list[tuple[str, str, str, float]] = field(default_factory=list)


# ----------------------------------------------------------------- classification


def service_of(req: Request) -> str:
    """The AWS service a request is for (its SigV4 credential scope), or a best guess."""
    m = _SCOPE.search(req.headers.get("authorization", ""))
    if m:
        return m.group(1)
    target = req.headers.get("x-amz-target", "")
    if target.startswith("DynamoDB"):
        return "dynamodb"
    if target.startswith("AmazonSQS"):
        return "sqs"
    return "unknown"


def operation_of(req: Request, service: str) -> str:
    target = req.headers.get("x-amz-target", "")
    if target:
        return target.rsplit(".", 1)[-1]
    if req.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        action = parse_qs(req.body.decode(errors="replace")).get("Action")
        if action:
            return action[0]
    if service == "s3":
        return s3_operation(req.method, req.path, req.query)
    if service == "lambda":
        m = _LAMBDA_PATH.match(req.path)
        if m and m.group(2) == "invocations":
            return "Invoke"
        if m and m.group(2) == "configuration":
            return "GetFunctionConfiguration" if req.method == "GET" else "UpdateFunctionConfiguration"
        return f"{req.method} {req.path.split('/')[2] if req.path.count('/') > 1 else req.path}"
    return f"{req.method} {req.path}"


def s3_operation(method: str, path: str, query: str) -> str:
    """The S3 operation of a path-style REST request."""
    q = parse_qs(query, keep_blank_values=True)
    parts = [p for p in path.split("/") if p]
    has_key = len(parts) > 1
    if method == "PUT":
        if "partNumber" in q and "uploadId" in q:
            return "UploadPart"
        if not has_key:
            return "CreateBucket" if not q else "PutBucketConfiguration"
        return "PutObject"
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        if "delete" in q:
            return "DeleteObjects"
        return "PostObject"
    if method == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload"
        return "DeleteObject" if has_key else "DeleteBucket"
    if method == "HEAD":
        return "HeadObject" if has_key else "HeadBucket"
    if method == "GET":
        if not parts:
            return "ListBuckets"
        if not has_key:
            if "uploads" in q:
                return "ListMultipartUploads"
            return "ListObjectsV2" if q.get("list-type") == ["2"] else "ListObjects"
        if "uploadId" in q:
            return "ListParts"
        return "GetObject"
    return f"{method} {path}"


def s3_price_class(operation: str) -> str:
    """`put`, `get` or `free`."""
    if operation in S3_FREE:
        return "free"
    return "put" if operation in S3_PUT_CLASS else "get"


# ----------------------------------------------------------------- DynamoDB sizes


def attribute_value_size(value: Mapping[str, Any]) -> int:
    """Bytes DynamoDB counts for one attribute value (wire format, e.g. `{"S": "x"}`)."""
    ((kind, v),) = value.items()
    if kind == "S":
        return len(str(v).encode())
    if kind == "N":
        return number_size(str(v))
    if kind == "B":
        return len(base64.b64decode(v)) if isinstance(v, str) else len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(s).encode()) for s in v)
    if kind == "NS":
        return sum(number_size(str(n)) for n in v)
    if kind == "BS":
        return sum(len(base64.b64decode(b)) for b in v)
    if kind == "M":
        return 3 + sum(len(k.encode()) + attribute_value_size(x) + 1 for k, x in v.items())
    if kind == "L":
        return 3 + sum(attribute_value_size(x) + 1 for x in v)
    raise ValueError(f"unknown DynamoDB attribute type {kind!r}")


def number_size(text: str) -> int:
    """Bytes of a DynamoDB number: about one per two significant digits, plus one."""
    d = Decimal(text).normalize()
    digits = len(d.as_tuple().digits)
    return 1 + math.ceil(digits / 2) + (1 if d < 0 else 0)


def item_size(item: Mapping[str, Any]) -> int:
    """Bytes DynamoDB counts for an item: attribute names plus values."""
    return sum(len(name.encode()) + attribute_value_size(value) for name, value in item.items())


def write_units(nbytes: int) -> float:
    """On-demand write units for writing an item of `nbytes` bytes: one per started KB."""
    return float(max(1, math.ceil(nbytes / 1024)))


def _key_text(key: Mapping[str, Any], key_names: Iterable[str]) -> str:
    parts = []
    for name in key_names:
        if name in key:
            ((_, v),) = key[name].items()
            parts.append(str(v))
    return "|".join(parts)


def _consumed_units(consumed: Any) -> float:
    if isinstance(consumed, Mapping):
        return float(consumed.get("CapacityUnits", 0.0))
    if isinstance(consumed, list):
        return sum(_consumed_units(c) for c in consumed)
    return 0.0


def dynamodb_writes(op: str, body: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any], Mapping[str, Any] | None]]:
    """(table, key or item, item written or None) for every item a write request touches."""
    out: list[tuple[str, Mapping[str, Any], Mapping[str, Any] | None]] = []
    if op == "PutItem":
        out.append((body["TableName"], body["Item"], body["Item"]))
    elif op in ("UpdateItem", "DeleteItem"):
        out.append((body["TableName"], body["Key"], None))
    elif op == "BatchWriteItem":
        for table, requests in body.get("RequestItems", {}).items():
            for r in requests:
                if "PutRequest" in r:
                    out.append((table, r["PutRequest"]["Item"], r["PutRequest"]["Item"]))
                elif "DeleteRequest" in r:
                    out.append((table, r["DeleteRequest"]["Key"], None))
    elif op == "BatchExecuteStatement":
        for statement in body.get("Statements", []):
            m = _PARTIQL_INSERT.match(str(statement.get("Statement", "")))
            params = statement.get("Parameters", [])
            names = _PARTIQL_FIELD.findall(m["fields"]) if m else []
            if m and len(names) == len(params):
                item = dict(zip(names, params, strict=True))
                out.append((m["table"], item, item))
    elif op == "TransactWriteItems":
        for entry in body.get("TransactItems", []):
            for kind in ("Put", "Update", "Delete"):
                if kind in entry:
                    e = entry[kind]
                    item = e.get("Item") if kind == "Put" else None
                    out.append((e["TableName"], e.get("Item") or e["Key"], item))
    return out


def measure_dynamodb(
    op: str,
    request_body: Mapping[str, Any],
    status: int,
    response_body: Mapping[str, Any],
    key_schemas: Mapping[str, tuple[str, ...]],
) -> Measured:
    """Units and written keys of one DynamoDB request."""
    m = Measured("dynamodb", op)
    reported = _consumed_units(response_body.get("ConsumedCapacity")) if status == 200 else 0.0
    if status != 200:
        m.error = str(response_body.get("__type", f"HTTP {status}")).rsplit("#", 1)[-1]
    writes = dynamodb_writes(op, request_body) if op in DYNAMODB_WRITES else []
    if op in DYNAMODB_WRITES:
        if status == 200:
            m.write_units = reported
        elif m.error == "ConditionalCheckFailedException":
            m.units_computed = True
            old = response_body.get("Item")
            sizes = [item_size(item) if item is not None else (item_size(old) if old else 0) for _, _, item in writes]
            m.write_units = sum(write_units(s) for s in sizes)
        elif m.error == "TransactionCanceledException":
            m.units_computed = True
            m.write_units = 2.0 * len(writes)
    elif op in DYNAMODB_READS and status == 200:
        m.read_units = reported
    share = m.write_units / len(writes) if writes else 0.0
    for table, key_or_item, _ in writes:
        names = key_schemas.get(table, ("pk", "sk"))
        pk = _key_text(key_or_item, names[:1])
        m.key_writes.append((table, pk, _key_text(key_or_item, names), share))
    return m


# ----------------------------------------------------------------- SQS and SES


def sqs_payload_bytes(op: str, request_body: Mapping[str, Any], response_body: Mapping[str, Any]) -> int:
    """Payload bytes of one SQS JSON request (sent bodies, or received bodies)."""
    if op == "SendMessage":
        return len(str(request_body.get("MessageBody", "")).encode())
    if op == "SendMessageBatch":
        return sum(len(str(e.get("MessageBody", "")).encode()) for e in request_body.get("Entries", []))
    if op == "ReceiveMessage":
        return sum(len(str(msg.get("Body", "")).encode()) for msg in response_body.get("Messages", []))
    return 0


def sqs_billed_requests(payload_bytes: int) -> float:
    """One request per started 64 KB chunk of payload (at least one)."""
    return float(max(1, math.ceil(payload_bytes / SQS_CHUNK_BYTES)))


def ses_recipients(op: str, form_body: bytes) -> int:
    """Recipients of an SES send (each is billed as one email)."""
    if op not in ("SendEmail", "SendRawEmail", "SendTemplatedEmail"):
        return 0
    fields = parse_qs(form_body.decode(errors="replace"))
    n = sum(1 for k in fields if k.startswith("Destination.") and ".member." in k)
    n += sum(1 for k in fields if k.startswith("Destinations.member."))
    return max(n, 1)


# ----------------------------------------------------------------- one request


def _json(data: bytes) -> dict[str, Any]:
    if not data:
        return {}
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def measure(
    req: Request, status: int, response_body: bytes, key_schemas: Mapping[str, tuple[str, ...]] | None = None
) -> Measured:
    """Classify one request and count what it is billed for."""
    service = service_of(req)
    op = operation_of(req, service)
    schemas = key_schemas or {}
    if service == "dynamodb":
        return measure_dynamodb(op, _json(req.body), status, _json(response_body), schemas)
    m = Measured(service, op)
    if status >= 400:
        m.error = f"HTTP {status}"
    if service == "sqs":
        m.billed_requests = sqs_billed_requests(sqs_payload_bytes(op, _json(req.body), _json(response_body)))
    elif service in ("ses", "email"):
        m.service = "ses"
        m.emails = ses_recipients(op, req.body) if status < 400 else 0
    return m
