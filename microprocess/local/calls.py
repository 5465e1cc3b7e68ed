"""A record of every AWS call a process makes, for checking them against the cloud stage's IAM.

With `MICROPROCESS_AWS_CALL_LOG=<folder>` in its environment, a process that imports `microprocess`
(a function, a service, the CLI) appends one JSON line per AWS API call to
`<folder>/<who>.<pid>.jsonl`: who made it (the function's name, the service process, or `operator`),
the service, the operation and the parameters that name its resources (never values or items).
The local stack passes the variable to the emulator (so to every function) and to each service
process; the e2e suite sets it and checks the record (`tests/test_local_e2e_calls.py`).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

#: The folder the records go to (unset: nothing is recorded, nothing is installed).
CALL_LOG_ENV = "MICROPROCESS_AWS_CALL_LOG"
#: A service process's name (`scores-queue`), set by `local up`.
PROCESS_ENV = "MICROPROCESS_PROCESS"
#: Parameters that name what a call acts on.
RESOURCE_PARAMS = (
    "TableName",
    "IndexName",
    "QueueUrl",
    "Bucket",
    "Key",
    "SecretId",
    "FunctionName",
    "Source",
    "SourceArn",
    "FromArn",
    "RoleArn",
    "UUID",
    "logGroupName",
)

_lock = threading.Lock()
_installed = False


def who() -> str:
    """The principal of this process: its Lambda function, its service process, or the operator."""
    return os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or os.environ.get(PROCESS_ENV) or "operator"


def call_record(service: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """The JSON record of one call: its resource-naming parameters only."""
    named: dict[str, Any] = {k: params[k] for k in RESOURCE_PARAMS if k in params}
    if isinstance(params.get("RequestItems"), dict):  # BatchGetItem / BatchWriteItem
        named["RequestItems"] = sorted(params["RequestItems"])
    if isinstance(params.get("TransactItems"), list):
        named["TransactItems"] = [
            {member: detail.get("TableName") for member, detail in item.items() if isinstance(detail, dict)}
            for item in params["TransactItems"]
            if isinstance(item, dict)
        ]
    statements = params.get("Statements") or ([{"Statement": params["Statement"]}] if "Statement" in params else [])
    if statements:
        named["Statements"] = sorted({str(s.get("Statement", "")).split("VALUE", 1)[0].strip() for s in statements})
    return {"who": who(), "service": service, "operation": operation, "params": named}


def install(folder: Path | str | None = None) -> bool:
    """Record every call of every botocore client of this process (once). Returns whether it records."""
    global _installed
    target = folder or os.environ.get(CALL_LOG_ENV)
    if not target or _installed:
        return _installed
    from botocore.client import BaseClient

    out = Path(target) / f"{who()}.{os.getpid()}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    original = BaseClient._make_api_call

    def recorded(self: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
        record = call_record(self.meta.service_model.service_name, operation_name, api_params)
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with _lock, out.open("a") as log:
            log.write(line)
        return original(self, operation_name, api_params)

    BaseClient._make_api_call = recorded  # type: ignore[method-assign]
    _installed = True
    return True
