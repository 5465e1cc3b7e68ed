"""The IAM actions each function needs, written out: least privilege without CDK's grant
action groups (`s3:GetObject*`, `s3:List*`, `dynamodb:*Stream*`, ...).

Each list names what the runtime calls (boto3 operations in `microprocess/`), so a widening
shows up in review and in `tests/test_infra_stacks.py`, which asserts every function's actions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam

#: The ledger (`microprocess.ledger.Ledger`): conditional puts, counter updates, reads, queries
#: of the runs index, batch reads of shard counters, and transactions of those.
LEDGER: tuple[str, ...] = (
    "dynamodb:BatchGetItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:GetItem",
    # A batch's task records go as PartiQL INSERTs in one BatchExecuteStatement (ledger).
    "dynamodb:PartiQLInsert",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
)
#: A job's item index (`item_index = true`): the splitter writes its entries 25 at a time.
ITEM_INDEX_WRITE: tuple[str, ...] = ("dynamodb:BatchWriteItem",)
#: The sweeper's counter repair removes the repair marker it left on a run.
REPAIR_DELETE: tuple[str, ...] = ("dynamodb:DeleteItem",)
#: A bundled service's declared tables: the live role reads items, the queue role also updates them.
SERVICE_TABLE_READ: tuple[str, ...] = ("dynamodb:GetItem",)
SERVICE_TABLE_WRITE: tuple[str, ...] = ("dynamodb:GetItem", "dynamodb:UpdateItem")
#: The service reduce (`reduce = "service"`): reads a run, its counters and its shards' task
#: records, and claims / records the run's email on the run item.
SERVICE_REDUCE_LEDGER: tuple[str, ...] = (
    "dynamodb:BatchGetItem",
    "dynamodb:GetItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
)
#: A DynamoDB item source: a parallel scan.
SOURCE_TABLE: tuple[str, ...] = ("dynamodb:Scan",)
#: Sending to a queue (SendMessageBatch is authorised by SendMessage).
SEND_MESSAGE: tuple[str, ...] = ("sqs:SendMessage",)
#: Reading an object (HeadObject is authorised by GetObject).
GET_OBJECT: tuple[str, ...] = ("s3:GetObject",)
#: Writing an object (multipart parts and completion are authorised by PutObject).
PUT_OBJECT: tuple[str, ...] = ("s3:PutObject",)
#: The built-in reduce: read and write report files (part files carry an expiry tag), abort a
#: failed multipart upload.
REPORT_OBJECTS: tuple[str, ...] = ("s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject", "s3:PutObjectTagging")
#: Reading a queue's depth (the splitter's backpressure).
QUEUE_DEPTH: tuple[str, ...] = ("sqs:GetQueueAttributes",)
#: The adaptive concurrency: read the forwarder's metrics (no resource-level permissions),
#: find a job's event source mapping (none either), set its maximum concurrency.
READ_METRICS: tuple[str, ...] = ("cloudwatch:GetMetricData",)
LIST_EVENT_SOURCE_MAPPINGS: tuple[str, ...] = ("lambda:ListEventSourceMappings",)
UPDATE_EVENT_SOURCE_MAPPING: tuple[str, ...] = ("lambda:UpdateEventSourceMapping",)
#: The adaptive controller's own state items in the ledger table (read, overwrite; a shared
#: service's high-priority marks are queried under its key).
CONTROLLER_STATE: tuple[str, ...] = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query")
#: Reading a signing key.
READ_SECRET: tuple[str, ...] = ("secretsmanager:GetSecretValue",)


def allow(
    grantee: iam.IGrantable,
    actions: Iterable[str],
    resources: Iterable[str],
    *,
    conditions: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Add one statement allowing `actions` on `resources` (under `conditions`, if any) to `grantee`'s policy."""
    grantee.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            actions=list(actions), resources=list(resources), conditions=dict(conditions) if conditions else None
        )
    )


def only_leading_keys(patterns: Iterable[str]) -> dict[str, dict[str, list[str]]]:
    """The condition that every item a DynamoDB request touches has a partition key matching one of
    `patterns` (IAM `StringLike`; `ForAllValues`: each key of a batch must match)."""
    return {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": sorted(patterns)}}


def allow_ledger(grantee: iam.IGrantable, table: dynamodb.ITable) -> None:
    """The ledger actions on the table; Query on its indexes too (the runs index lists a job's runs)."""
    allow(grantee, LEDGER, [table.table_arn])
    allow(grantee, ("dynamodb:Query",), [f"{table.table_arn}/index/*"])
