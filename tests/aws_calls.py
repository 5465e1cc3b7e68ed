"""Checks the AWS calls recorded during the e2e suite (`microprocess.local.calls`) against the synthesized
cloud template's IAM, and lists the call sites in the code the record never saw.

Each recorded call of a function or a service process becomes one or more (IAM action, resource ARN)
pairs, as AWS authorises it (batch and PartiQL rules as in `microprocess.local.gateway`); its local
resources are named by their logical ids (the stack-resource files `local up` writes beside the record),
so the pair is evaluated against the cloud stage's role of the same principal, with the emulator's own
evaluator (`tests.iam_policies`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import botocore.session
from botocore import xform_name

from microprocess.local.gateway import SQS_BATCH_ACTIONS, partiql_statement_check
from tests.iam_policies import ACCOUNT, REGION, Template

#: S3 operations and the action that authorises each.
S3_ACTIONS = {
    "HeadObject": "s3:GetObject",
    "GetObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "PutObjectTagging": "s3:PutObjectTagging",
    "DeleteObject": "s3:DeleteObject",
}
TRANSACT_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
    "Get": "dynamodb:GetItem",
}
#: Services whose calls the code makes as a function or a service (not only as the operator).
CHECKED_SERVICES = ("dynamodb", "sqs", "s3", "secretsmanager", "ses", "lambda", "cloudwatch")
#: Where the code calls AWS as a function or a service (the CLI, the local stack, chaos and the bench call
#: as the operator, with the account's root credentials).
CODE_ROOTS = (
    "microprocess/pipeline",
    "microprocess/ledger",
    "microprocess/reduce",
    "microprocess/control",
    "microprocess/service",
    "microprocess/declarations",
    "functions",
    "microservice",
    "reminders_service",
)


@dataclass(frozen=True)
class Check:
    """One recorded call as IAM sees it."""

    who: str
    operation: str
    action: str
    resource: str

    def __str__(self) -> str:
        return f"{self.who}: {self.operation} needs {self.action} on {self.resource}"


class CallRecord:
    """The record of one e2e session (the folder `MICROPROCESS_AWS_CALL_LOG` named)."""

    def __init__(self, folder: Path) -> None:
        self.calls = [
            json.loads(line)
            for path in sorted(folder.glob("*.jsonl"))
            for line in path.read_text().splitlines()
            if line.strip()
        ]
        self.physical: dict[str, str] = {}
        for path in folder.glob("stack-resources.*.json"):
            for r in json.loads(path.read_text()):
                if r.get("PhysicalResourceId"):
                    self.physical[str(r["PhysicalResourceId"])] = str(r["LogicalResourceId"])

    def principals(self) -> set[str]:
        return {c["who"] for c in self.calls if c["who"] != "operator"}

    def logical(self, physical: str) -> str | None:
        """The logical id of a local resource, by its physical id, name, URL or ARN."""
        if physical in self.physical:
            return self.physical[physical]
        if ":secret:" in physical:  # a secret's ARN: ...:secret:<name>-<6 random characters>
            name = physical.rsplit(":secret:", 1)[1].rsplit("-", 1)[0]
            if name in self.physical:
                return self.physical[name]
        for known, logical in self.physical.items():
            if known.endswith(f"/{physical}") or known.endswith(f":{physical}") or physical.endswith(f"/{known}"):
                return logical
        return None

    def checks(self, cloud: Template) -> Iterator[Check]:
        """Every non-operator call as (action, resource) in the cloud template's terms."""
        for call in self.calls:
            if call["who"] == "operator" or call["service"] not in CHECKED_SERVICES:
                continue
            for action, resource in self._iam_of(call, cloud):
                yield Check(call["who"], call["operation"], action, resource)

    def _arn(self, cloud: Template, physical: str) -> str:
        logical = self.logical(physical)
        if logical is None or logical not in cloud.resources:
            return f"<unknown local resource {physical}>"
        kind = cloud.resources[logical]["Type"]
        if kind in ("AWS::SecretsManager::Secret",):
            return str(cloud.resolve({"Ref": logical}))
        if kind == "AWS::Lambda::EventSourceMapping":
            return f"arn:aws:lambda:{REGION}:{ACCOUNT}:event-source-mapping:{logical}"
        return cloud.arn(logical)

    def _iam_of(self, call: dict[str, Any], cloud: Template) -> list[tuple[str, str]]:
        service, op, params = call["service"], call["operation"], call["params"]
        if service == "dynamodb":
            return self._dynamodb(op, params, cloud)
        if service == "sqs":
            action = SQS_BATCH_ACTIONS.get(f"sqs:{op}", f"sqs:{op}")
            queue = str(params.get("QueueUrl", "")).rstrip("/")
            return [(action, self._arn(cloud, queue))]
        if service == "s3":
            bucket = self.logical(str(params.get("Bucket", "")))
            base = f"arn:aws:s3:::{bucket.lower()}" if bucket else f"arn:aws:s3:::{params.get('Bucket')}"
            if op == "ListObjectsV2":
                return [("s3:ListBucket", base)]
            return [(S3_ACTIONS.get(op, f"s3:{op}"), f"{base}/{params.get('Key', '')}")]
        if service == "secretsmanager":
            return [(f"secretsmanager:{op}", self._arn(cloud, str(params.get("SecretId", ""))))]
        if service == "ses":
            source = params.get("SourceArn") or params.get("FromArn")
            address = parseaddr(str(params.get("Source", "")))[1]
            return [(f"ses:{op}", source or f"arn:aws:ses:{REGION}:{ACCOUNT}:identity/{address}")]
        if service == "lambda":
            if op == "Invoke":
                return [("lambda:InvokeFunction", self._arn(cloud, str(params.get("FunctionName", ""))))]
            if op == "UpdateEventSourceMapping":
                return [("lambda:UpdateEventSourceMapping", self._arn(cloud, str(params.get("UUID", ""))))]
            return [(f"lambda:{op}", "*")]
        return [(f"{service}:{op}", "*")]

    def _dynamodb(self, op: str, params: dict[str, Any], cloud: Template) -> list[tuple[str, str]]:
        if op in ("BatchGetItem", "BatchWriteItem"):
            return [(f"dynamodb:{op}", self._arn(cloud, t)) for t in params.get("RequestItems", [])]
        if op in ("TransactWriteItems", "TransactGetItems"):
            return [
                (TRANSACT_ACTIONS[member], self._arn(cloud, table))
                for item in params.get("TransactItems", [])
                for member, table in item.items()
                if member in TRANSACT_ACTIONS and table
            ]
        if op in ("ExecuteStatement", "BatchExecuteStatement"):
            found = []
            for statement in params.get("Statements", []):
                check = partiql_statement_check(statement, REGION, ACCOUNT)
                if check is None:
                    found.append(("dynamodb:PartiQL<unparsed>", statement))
                else:
                    found.append((check[0], self._arn(cloud, check[1].rsplit("/", 1)[1])))
            return found
        table = self._arn(cloud, str(params.get("TableName", "")))
        if params.get("IndexName"):
            table = f"{table}/index/{params['IndexName']}"
        return [(f"dynamodb:{op}", table)]


def role_of_principal(record: CallRecord, who: str, cloud: Template, service_roles: dict[str, str]) -> str | None:
    """The cloud role logical id of a recorded principal: a function (by its local name) or a service process."""
    if who in service_roles:
        return service_roles[who]
    logical = record.logical(who)
    if logical and logical in cloud.resources and cloud.resources[logical]["Type"] == "AWS::Lambda::Function":
        return str(cloud.resources[logical]["Properties"]["Role"]["Fn::GetAtt"][0])
    return None


def code_call_sites(root: Path) -> dict[tuple[str, str], list[str]]:
    """Every call in the code of an operation of `CHECKED_SERVICES` (by its snake_case method name), as
    {(service, Operation): ["file:line", ...]}. A name several services share counts for each."""
    session = botocore.session.get_session()
    by_method: dict[str, list[tuple[str, str]]] = {}
    for service in CHECKED_SERVICES:
        for op in session.get_service_model(service).operation_names:
            by_method.setdefault(xform_name(op), []).append((service, op))
    pattern = re.compile(r"\.(" + "|".join(sorted(by_method, key=len, reverse=True)) + r")\(")
    found: dict[tuple[str, str], list[str]] = {}
    for folder in CODE_ROOTS:
        for path in sorted((root / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.lstrip().startswith("#"):
                    continue
                for method in pattern.findall(line):
                    for key in by_method[method]:
                        found.setdefault(key, []).append(f"{path.relative_to(root)}:{n}")
    return found
