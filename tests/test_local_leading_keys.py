"""`dynamodb:LeadingKeys` of a request as AWS sets it, added to the emulator's condition context
(`microprocess.local.leading_keys`, `gateway.dynamodb_context`), so that a role limited to some keys is
refused the others locally as on AWS."""

from __future__ import annotations

import json
from typing import Any

from ministack.core.iam_evaluator import EvalContext, evaluate, parse_policy_document

from microprocess.local import gateway
from microprocess.local.leading_keys import leading_keys

KEYS = {"ledger": "pk", "companies": "company_id"}
INDEXES = {("ledger", "runs-by-job"): "job"}


def hash_key(table: str, index: str | None) -> str | None:
    return INDEXES.get((table, index)) if index else KEYS.get(table)


def s(value: str) -> dict[str, str]:
    return {"S": value}


def test_every_kind_of_request_gives_the_partition_keys_it_touches() -> None:
    key = {"pk": s("RUN#a-1"), "sk": s("RUN")}
    assert leading_keys({"TableName": "ledger", "Key": key}, hash_key) == ["RUN#a-1"]
    assert leading_keys({"TableName": "ledger", "Item": {**key, "x": s("y")}}, hash_key) == ["RUN#a-1"]
    query = {
        "TableName": "ledger",
        "KeyConditionExpression": "pk = :p AND begins_with(sk, :t)",
        "ExpressionAttributeValues": {":p": s("RUN#a-1#S3"), ":t": s("T#")},
    }
    assert leading_keys(query, hash_key) == ["RUN#a-1#S3"]
    named = {**query, "KeyConditionExpression": ":p = #k", "ExpressionAttributeNames": {"#k": "pk"}}
    assert leading_keys(named, hash_key) == ["RUN#a-1#S3"]
    on_index = {
        "TableName": "ledger",
        "IndexName": "runs-by-job",
        "KeyConditionExpression": "job = :j",
        "ExpressionAttributeValues": {":j": s("a")},
    }
    assert leading_keys(on_index, hash_key) == ["a"]
    batch_get = {"RequestItems": {"ledger": {"Keys": [{"pk": s("RUN#a-1#C0")}, {"pk": s("RUN#b-2#C1")}]}}}
    assert leading_keys(batch_get, hash_key) == ["RUN#a-1#C0", "RUN#b-2#C1"]
    batch_write = {
        "RequestItems": {
            "ledger": [{"PutRequest": {"Item": {"pk": s("RUN#a-1")}}}, {"DeleteRequest": {"Key": {"pk": s("X")}}}]
        }
    }
    assert leading_keys(batch_write, hash_key) == ["RUN#a-1", "X"]
    transaction = {
        "TransactItems": [
            {"Update": {"TableName": "ledger", "Key": {"pk": s("RUN#a-1#C0")}}},
            {"ConditionCheck": {"TableName": "companies", "Key": {"company_id": s("C1")}}},
        ]
    }
    assert leading_keys(transaction, hash_key) == ["C1", "RUN#a-1#C0"]
    # a scan names none; an unknown table or an untyped key gives "" (refused by a condition on the keys)
    assert leading_keys({"TableName": "ledger", "Segment": 0}, hash_key) is None
    assert leading_keys({"TableName": "nope", "Key": key}, hash_key) == [""]
    assert leading_keys({"TableName": "ledger", "Key": {"pk": "untyped"}}, hash_key) == [""]


def policy_allows(context: dict[str, Any]) -> bool:
    doc = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "dynamodb:GetItem",
                "Resource": "arn:aws:dynamodb:us-east-1:000000000000:table/ledger",
                "Condition": {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["RUN#a-*"]}},
            }
        ],
    }
    ctx = EvalContext(
        principal_arn="arn:aws:sts::000000000000:assumed-role/r/s",
        principal_type="AssumedRole",
        principal_account="000000000000",
        action="dynamodb:GetItem",
        resource_arn="arn:aws:dynamodb:us-east-1:000000000000:table/ledger",
        region="us-east-1",
        source_ip="127.0.0.1",
        secure_transport=True,
        service_context={k.lower(): v for k, v in context.items()},
    )
    return evaluate(ctx, [parse_policy_document(json.dumps(doc))]).decision == "Allow"


def test_the_gateway_adds_the_keys_so_a_key_scoped_role_is_refused_other_keys() -> None:
    # GIVEN ministack's own context (no LeadingKeys) and the gateway's
    original = lambda body: {"dynamodb:Select": "ALL_ATTRIBUTES"}  # noqa: E731
    context = gateway.dynamodb_context(original, hash_key)
    own = json.dumps({"TableName": "ledger", "Key": {"pk": s("RUN#a-1"), "sk": s("RUN")}}).encode()
    other = json.dumps({"TableName": "ledger", "Key": {"pk": s("RUN#b-1"), "sk": s("RUN")}}).encode()
    # THEN without the keys ministack would allow another job's run (an absent key passes ForAllValues)
    assert policy_allows(original(other))
    # AND with them its own run is allowed and the other refused
    assert context(own)["dynamodb:LeadingKeys"] == ["RUN#a-1"] and context(own)["dynamodb:Select"] == "ALL_ATTRIBUTES"
    assert policy_allows(context(own))
    assert not policy_allows(context(other))
    # a body that is not JSON keeps ministack's context
    assert context(b"not json") == {"dynamodb:Select": "ALL_ATTRIBUTES"}
