"""`python -m microprocess.local.gateway`: ministack's server with IAM authorised as AWS does.

ministack (started with `AUTH=true`) evaluates identity and resource policies itself. Where its
action names differ from AWS's documented authorisation, a role that is right on AWS would be
refused locally (or a wrong one allowed), so this entry point corrects exactly those, from the
AWS Service Authorization Reference, and otherwise runs ministack's own `main()` unchanged:

* batch operations that AWS authorises by their single-message action (`SQS_BATCH_ACTIONS`);
* PartiQL statements, which AWS authorises per statement as `dynamodb:PartiQL<Verb>` on the
  statement's table (`partiql_checks`), not as `dynamodb:BatchExecuteStatement`;
* SES v1 `SendEmail` / `SendRawEmail` are authorised on the sending identity (`SourceArn`, else
  the `Source` address's identity); ministack checks them on `*` (`ses_send_resource`);
* `Ref` of an `AWS::SecretsManager::Secret` is the secret's ARN on AWS (ministack gives its
  name), so the policies that grant a secret by `Ref` name the same resource as on AWS
  (`REF_IS_ARN`);
* for the bench's cost model only (`MICROPROCESS_DYNAMODB_CONSUMED_CAPACITY=1`): every DynamoDB read
  and write reports the capacity it consumed, as if it had asked `ReturnConsumedCapacity=TOTAL`
  (the counting proxy cannot add that to a signed request; callers ignore the extra field);
* ministack sets no `dynamodb:LeadingKeys` (the partition keys a request touches), so a role
  limited to some keys (a service's reduce: its own jobs' runs) would reach every key locally;
  each DynamoDB request's keys are added to its condition context (`dynamodb_context`, from
  `microprocess.local.leading_keys`);
* ministack's standard-queue receive ignores `MessageGroupId`; on AWS it makes a standard queue a
  *fair queue*, which our runs rely on (`microprocess.pipeline.tenants`): the receive of standard
  queues follows AWS's documented fair-queue order (`microprocess.local.fair_queue`);
* with TLS on, ministack also binds port 443 whenever it can (as root it always can): two local
  stacks would race for it, and a stack would listen where nobody asked. It is not bound.

`tests/test_local_gateway.py` checks each correction against the hooks it replaces, so a
ministack upgrade that moves them fails the suite instead of silently enforcing other rules.
"""

from __future__ import annotations

import base64
import email
import email.utils
import importlib
import json
import os
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

from microprocess.local import fair_queue
from microprocess.local.leading_keys import HashKeyOf, leading_keys

#: SQS batch operations and the action AWS authorises each with ("SendMessageBatch: the
#: permissions of SendMessage", and so on; there are no `sqs:*Batch` IAM actions).
SQS_BATCH_ACTIONS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}
#: PartiQL operations: authorised per statement, by the statement's verb, on its table.
PARTIQL_OPERATIONS = ("dynamodb:ExecuteStatement", "dynamodb:BatchExecuteStatement")
PARTIQL_VERB_ACTIONS = {
    "SELECT": "dynamodb:PartiQLSelect",
    "INSERT": "dynamodb:PartiQLInsert",
    "UPDATE": "dynamodb:PartiQLUpdate",
    "DELETE": "dynamodb:PartiQLDelete",
}
#: `INSERT INTO "table" ...`, `SELECT ... FROM "table"`, `UPDATE "table" ...`, `DELETE FROM "table" ...`.
_PARTIQL_TABLE = re.compile(
    r"""^\s*(?:(?P<read>SELECT|DELETE)\b.*?\bFROM|(?P<insert>INSERT)\s+INTO|(?P<update>UPDATE))\s*"?(?P<table>[A-Za-z0-9_.-]+)"?""",
    re.IGNORECASE | re.DOTALL,
)


def iam_action(original: Callable[..., str | None]) -> Callable[..., str | None]:
    """ministack's `extract_iam_action` with SQS batches named as AWS authorises them."""

    def extract(*args: Any, **kwargs: Any) -> str | None:
        action = original(*args, **kwargs)
        return SQS_BATCH_ACTIONS.get(action, action) if action else action

    return extract


def partiql_statement_check(statement: str, region: str, account_id: str) -> tuple[str, str] | None:
    """The (action, table ARN) AWS authorises one PartiQL statement with, or None when unparseable."""
    match = _PARTIQL_TABLE.match(statement)
    if not match:
        return None
    table = match.group("table").split(".", 1)[0]  # "table"."index" reads the table's index
    verb = match.group("read") or match.group("insert") or match.group("update")
    return PARTIQL_VERB_ACTIONS[verb.upper()], f"arn:aws:dynamodb:{region}:{account_id}:table/{table}"


def partiql_checks(body: bytes, region: str, account_id: str) -> list[tuple[str, str]]:
    """Per-statement checks of an ExecuteStatement / BatchExecuteStatement request body.

    A statement that cannot be parsed is checked as `dynamodb:PartiQLSelect` *and*
    `dynamodb:PartiQLInsert` on no table: it is refused unless the role may do everything."""
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
        return []
    if not isinstance(data, dict):
        return []
    statements = [s.get("Statement") for s in data.get("Statements") or [] if isinstance(s, dict)]
    if "Statement" in data:
        statements.append(data.get("Statement"))
    checks: list[tuple[str, str]] = []
    for text in statements:
        check = partiql_statement_check(text, region, account_id) if isinstance(text, str) else None
        if check is None:
            unknown = f"arn:aws:dynamodb:{region}:{account_id}:table/*"
            checks += [(action, unknown) for action in PARTIQL_VERB_ACTIONS.values()]
        elif check not in checks:
            checks.append(check)
    return checks


def transaction_checks(original: Callable[..., list[tuple[str, str]]]) -> Callable[..., list[tuple[str, str]]]:
    """ministack's per-item checks of a DynamoDB transaction, extended to PartiQL statements."""

    def checks(iam_action: str, body: bytes, region: str, account_id: str) -> list[tuple[str, str]]:
        if iam_action in PARTIQL_OPERATIONS:
            return partiql_checks(body, region, account_id)
        return original(iam_action, body, region, account_id)

    return checks


#: Resource types whose `Ref` AWS CloudFormation resolves to the ARN (ministack: to the name).
REF_IS_ARN = ("AWS::SecretsManager::Secret",)
#: ministack's CloudFormation modules that import `_resolve_refs` by name.
_CFN_MODULES = ("engine", "stacks", "handlers", "changesets")


def resolve_refs(original: Callable[..., Any]) -> Callable[..., Any]:
    """ministack's CloudFormation `_resolve_refs` with `Ref` of the `REF_IS_ARN` types giving the ARN."""

    def resolve(value: Any, resources: Any, *rest: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("Ref"), str) and isinstance(resources, dict):
            record = resources.get(value["Ref"])
            if isinstance(record, dict) and record.get("ResourceType") in REF_IS_ARN:
                arn = (record.get("Attributes") or {}).get("Arn")
                if arn:
                    return arn
        return original(value, resources, *rest)

    return resolve


#: SES v1 sending actions, authorised on the identity that sends.
SES_SEND_ACTIONS = ("SendEmail", "SendRawEmail")


def ses_send_resource(params: dict[str, Any], region: str, account_id: str) -> str | None:
    """The identity ARN AWS authorises an SES v1 send on: `SourceArn` (or `FromArn`) when given, else
    the identity of the `Source` address (the raw message's From for `SendRawEmail` without one)."""

    def first(key: str) -> str:
        value = params.get(key, "")
        return str(value[0] if isinstance(value, list) and value else value or "")

    if first("Action") not in SES_SEND_ACTIONS:
        return None
    arn = first("SourceArn") or first("FromArn")
    if arn:
        return arn
    source = first("Source")
    if not source and first("RawMessage.Data"):
        try:
            raw = base64.b64decode(first("RawMessage.Data"))
        except ValueError:
            raw = b""
        source = str(email.message_from_bytes(raw).get("From") or "")
    address = email.utils.parseaddr(source)[1]
    return f"arn:aws:ses:{region}:{account_id}:identity/{address}" if address else None


def resource_arn(original: Callable[..., str]) -> Callable[..., str]:
    """ministack's `extract_resource_arn` with SES v1 sends on their sending identity."""

    def extract(
        service: str,
        method: str,
        path: str,
        headers: dict[str, Any],
        body: bytes,
        query_params: dict[str, Any],
        region: str,
        account_id: str,
    ) -> str:
        if service == "ses" and method == "POST":
            params = dict(query_params)
            if body:
                params.update(urllib.parse.parse_qs(body.decode("utf-8", "replace")))
            sender = ses_send_resource(params, region, account_id)
            if sender:
                return sender
        return original(service, method, path, headers, body, query_params, region, account_id)

    return extract


#: Set (to 1) by the bench: DynamoDB answers report their consumed capacity (`with_consumed_capacity`).
CONSUMED_CAPACITY_ENV = "MICROPROCESS_DYNAMODB_CONSUMED_CAPACITY"
#: DynamoDB operations that take `ReturnConsumedCapacity`.
CAPACITY_OPERATIONS = frozenset(
    {
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "BatchWriteItem",
        "TransactWriteItems",
        "GetItem",
        "BatchGetItem",
        "Query",
        "Scan",
        "TransactGetItems",
        "ExecuteStatement",
        "BatchExecuteStatement",
    }
)


def with_consumed_capacity(operation: str, body: bytes) -> bytes | None:
    """The DynamoDB request body with `ReturnConsumedCapacity=TOTAL` added, or None if it already asks
    (or the operation does not take it)."""
    if operation not in CAPACITY_OPERATIONS:
        return None
    try:
        data = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("ReturnConsumedCapacity") in ("TOTAL", "INDEXES"):
        return None
    data["ReturnConsumedCapacity"] = "TOTAL"
    return json.dumps(data, separators=(",", ":")).encode()


def reporting_capacity(handler: Callable[..., Any]) -> Callable[..., Any]:
    """ministack's DynamoDB handler, run after authorisation, with every request's capacity reported."""

    async def handle(method: str, path: str, headers: dict[str, Any], body: bytes, query_params: Any) -> Any:
        operation = str(headers.get("x-amz-target", "")).rsplit(".", 1)[-1]
        return await handler(method, path, headers, with_consumed_capacity(operation, body) or body, query_params)

    return handle


def dynamodb_context(
    original: Callable[[bytes], dict[str, Any]], hash_key_of: HashKeyOf
) -> Callable[[bytes], dict[str, Any]]:
    """ministack's `dynamodb_service_context` with `dynamodb:LeadingKeys` added (when the request names keys)."""

    def context(body: bytes) -> dict[str, Any]:
        found = dict(original(body))
        try:
            request = json.loads(body or b"{}")
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
            return found
        keys = leading_keys(request, hash_key_of) if isinstance(request, dict) else None
        if keys is not None:
            found["dynamodb:LeadingKeys"] = keys
        return found

    return context


def emulator_hash_key(table: str, index: str | None) -> str | None:
    """The partition key attribute of a table (or of its index) of the running emulator, None if unknown."""
    from ministack.services import dynamodb

    record = dynamodb._tables.get(table)  # type: ignore[attr-defined]
    if not isinstance(record, dict):
        return None
    if index is None:
        return str(record.get("pk_name") or "") or None
    for declared in [*(record.get("GlobalSecondaryIndexes") or []), *(record.get("LocalSecondaryIndexes") or [])]:
        if declared.get("IndexName") == index:
            return next((k["AttributeName"] for k in declared.get("KeySchema", []) if k.get("KeyType") == "HASH"), None)
    return None


def _never_port_443(host: str, port: int) -> bool:
    # ministack asks this only for port 443, its extra TLS listener.
    return False


def install() -> None:
    """Apply the corrections to the imported ministack (before its server starts)."""
    from ministack import app
    from ministack.core import iam_actions

    iam_actions.extract_iam_action = iam_action(iam_actions.extract_iam_action)
    iam_actions.dynamodb_transaction_checks = transaction_checks(iam_actions.dynamodb_transaction_checks)
    iam_actions.extract_resource_arn = resource_arn(iam_actions.extract_resource_arn)
    iam_actions.dynamodb_service_context = dynamodb_context(iam_actions.dynamodb_service_context, emulator_hash_key)
    app._port_is_bindable = _never_port_443
    fair_queue.install()
    if os.environ.get(CONSUMED_CAPACITY_ENV) == "1":
        app.SERVICE_HANDLERS["dynamodb"] = reporting_capacity(app.SERVICE_HANDLERS["dynamodb"])
    modules = [importlib.import_module(f"ministack.services.cloudformation.{name}") for name in _CFN_MODULES]
    resolve = resolve_refs(modules[0]._resolve_refs)  # type: ignore[attr-defined]
    for module in modules:
        module._resolve_refs = resolve  # type: ignore[attr-defined]


if __name__ == "__main__":
    install()
    from ministack import app as _app

    _app.main()
