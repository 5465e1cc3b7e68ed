"""PartiQL INSERT in `BatchExecuteStatement` for moto, with DynamoDB's semantics.

moto's own `batch_execute_statement` neither fails an INSERT whose key exists (DynamoDB answers
that statement `DuplicateItem`) nor scales (it copies every table for each statement). The ledger
writes a batch's task records as INSERTs (`microprocess.ledger.records.insert_statement`), so
the unit tests need the real semantics: this stand-in reads each INSERT of that form (values as
parameters) and applies it as a put conditional on the key not existing; any other statement goes
to moto's own implementation, one by one. The real service's behaviour is exercised by the e2e
tests and the chaos suite on the local stack (ministack implements the duplicate check).
"""

from __future__ import annotations

import re
from typing import Any

from moto.dynamodb.exceptions import ConditionalCheckFailed
from moto.dynamodb.models import DynamoDBBackend

_INSERT = re.compile(r'^INSERT INTO "(?P<table>[^"]+)" VALUE \{(?P<fields>.*)\}$', re.DOTALL)
_FIELD = re.compile(r"^'(?P<name>[A-Za-z0-9_]+)': \?$")

_moto_batch_execute_statement = DynamoDBBackend.batch_execute_statement


def _insert(backend: DynamoDBBackend, statement: str, parameters: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The response of one INSERT of the ledger's form, or None for any other statement."""
    m = _INSERT.match(statement.strip())
    if m is None:
        return None
    names = []
    for field in m["fields"].split(", "):
        f = _FIELD.match(field)
        if f is None:
            return None
        names.append(f["name"])
    if len(names) != len(parameters):
        return {"Error": {"Code": "ValidationError", "Message": "parameter count does not match the statement"}}
    table = m["table"]
    try:
        item = dict(zip(names, parameters, strict=True))
        backend.put_item(table, item, condition_expression="attribute_not_exists(pk)")
    except ConditionalCheckFailed:
        duplicate = {"Code": "DuplicateItem", "Message": "Duplicate primary key exists in table"}
        return {"TableName": table, "Error": duplicate}
    return {"TableName": table}


def batch_execute_statement(self: DynamoDBBackend, statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Each statement on its own: an INSERT of the ledger's form here, any other one by moto.
    out = []
    for statement in statements:
        answer = _insert(self, statement["Statement"], statement.get("Parameters", []))
        out.append(answer if answer is not None else _moto_batch_execute_statement(self, [statement])[0])
    return out


def install() -> None:
    DynamoDBBackend.batch_execute_statement = batch_execute_statement  # type: ignore[method-assign]
