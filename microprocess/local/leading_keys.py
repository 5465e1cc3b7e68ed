"""`dynamodb:LeadingKeys` of a DynamoDB request, as AWS sets it: the partition key values it touches.

AWS evaluates a policy condition on `dynamodb:LeadingKeys` against the partition key of every item
a request reads or writes (the key of a `GetItem`, `UpdateItem`, `DeleteItem`; the item of a
`PutItem`; each key and item of a batch or a transaction; the partition key a `Query` names in its
key condition). A `Scan` names none: the key is absent. ministack (the pinned emulator) does not set
it, so a condition on it would pass every request locally (an absent key satisfies `ForAllValues`);
`microprocess.local.gateway` adds it with `leading_keys` below.

A batch or a transaction is evaluated here as one set of keys (every key must match, as
`ForAllValues` asks), which is what AWS's per-item evaluation gives for a condition on the keys alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

#: `(table name, index name or None) -> the name of its partition key attribute` (None: unknown table).
HashKeyOf = Callable[[str, str | None], str | None]

#: `<name or #placeholder> = <:value>` (either order) in a key condition expression.
_EQUALITY = re.compile(r"(#?[A-Za-z0-9_]+)\s*=\s*(:[A-Za-z0-9_]+)|(:[A-Za-z0-9_]+)\s*=\s*(#?[A-Za-z0-9_]+)")


def attribute_text(value: Any) -> str | None:
    """A DynamoDB attribute value (`{"S": "x"}`, `{"N": "1"}`, `{"B": ...}`) as the text IAM compares."""
    if isinstance(value, Mapping) and len(value) == 1:
        kind, inner = next(iter(value.items()))
        if kind in ("S", "N", "B") and isinstance(inner, (str, int, float)):
            return str(inner)
    return None


def _query_key(request: Mapping[str, Any], hash_key: str) -> Iterator[Any]:
    names = request.get("ExpressionAttributeNames") or {}
    values = request.get("ExpressionAttributeValues") or {}
    expression = request.get("KeyConditionExpression")
    if isinstance(expression, str):
        for m in _EQUALITY.finditer(expression):
            name, placeholder = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
            if names.get(name, name) == hash_key:
                yield values.get(placeholder)
    legacy = request.get("KeyConditions") or {}
    condition = legacy.get(hash_key) if isinstance(legacy, Mapping) else None
    if isinstance(condition, Mapping):
        yield from condition.get("AttributeValueList") or []


def _keyed(table: str, hash_key_of: HashKeyOf, entries: list[Any]) -> Iterator[Any]:
    hash_key = hash_key_of(table, None)
    for entry in entries:
        yield entry.get(hash_key) if hash_key and isinstance(entry, Mapping) else None


def _values(request: Mapping[str, Any], hash_key_of: HashKeyOf) -> Iterator[Any] | None:
    table = request.get("TableName")
    if isinstance(table, str):
        if "KeyConditionExpression" in request or "KeyConditions" in request:
            index = request.get("IndexName")
            hash_key = hash_key_of(table, index if isinstance(index, str) else None)
            return _query_key(request, hash_key) if hash_key else iter([None])
        for member in ("Key", "Item"):
            if member in request:
                return _keyed(table, hash_key_of, [request[member]])
        return None
    batch = request.get("RequestItems")
    if isinstance(batch, Mapping):
        return _batch(batch, hash_key_of)
    transaction = request.get("TransactItems")
    if isinstance(transaction, list):
        return (
            value
            for entry in transaction
            if isinstance(entry, Mapping)
            for inner in entry.values()
            if isinstance(inner, Mapping)
            for value in (_values(inner, hash_key_of) or iter(()))
        )
    return None


def _batch(batch: Mapping[str, Any], hash_key_of: HashKeyOf) -> Iterator[Any]:
    for table, requests in batch.items():
        if isinstance(requests, Mapping):  # BatchGetItem: {"Keys": [...]}
            yield from _keyed(table, hash_key_of, list(requests.get("Keys") or []))
            continue
        for write in requests if isinstance(requests, list) else []:  # BatchWriteItem
            for kind, member in (("PutRequest", "Item"), ("DeleteRequest", "Key")):
                detail = write.get(kind) if isinstance(write, Mapping) else None
                if isinstance(detail, Mapping):
                    yield from _keyed(table, hash_key_of, [detail.get(member)])


def leading_keys(request: Mapping[str, Any], hash_key_of: HashKeyOf) -> list[str] | None:
    """The partition key values the request (its JSON body, typed values) touches, or None when it names
    none (a `Scan`). A key that cannot be read (an unknown table, an untyped value) is given as "" so that
    a condition on the keys refuses the request rather than pass it."""
    values = _values(request, hash_key_of)
    if values is None:
        return None
    return sorted({attribute_text(v) or "" for v in values})
