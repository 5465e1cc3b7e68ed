"""The run ledger table, built from `microprocess.ledger.LEDGER_SCHEMA`."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from microprocess.ledger import LEDGER_SCHEMA, LedgerSchema

from .nag import skip_checkov

#: Why a table keeps the AWS-managed key rather than a customer-managed one (checkov CKV_AWS_119).
AWS_MANAGED_KEY_REASON = (
    "Encrypted at rest with the AWS-managed KMS key (aws/dynamodb). A customer-managed key would add a key "
    "policy to keep in step with the IAM grants and a KMS dependency on every read and write, and would narrow "
    "no reader: access is only through IAM grants to the platform's named roles."
)


class LedgerTable(Construct):
    """One on-demand DynamoDB table holding runs, tasks and counters.

    Safe defaults: point-in-time recovery on, encrypted with the AWS-managed key, retained
    on stack deletion. The keys and the runs index come from `schema` (the same object the
    runtime uses), never from literals here.

    Args:
        schema: the key schema (default `LEDGER_SCHEMA`).
        point_in_time_recovery: keep continuous backups.
        removal_policy: what happens to the table when the stack is deleted.

    Attributes:
        table: the `dynamodb.Table`.
        runs_index_name: the name of the index that lists a job's runs.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        schema: LedgerSchema = LEDGER_SCHEMA,
        point_in_time_recovery: bool = True,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, construct_id)
        string = dynamodb.AttributeType.STRING
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name=schema.partition_key, type=string),
            sort_key=dynamodb.Attribute(name=schema.sort_key, type=string),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=point_in_time_recovery
            ),
            removal_policy=removal_policy,
        )
        self.table.add_global_secondary_index(
            index_name=schema.runs_index,
            partition_key=dynamodb.Attribute(name=schema.runs_index_partition_key, type=string),
            sort_key=dynamodb.Attribute(name=schema.runs_index_sort_key, type=string),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        self.runs_index_name = schema.runs_index
        skip_checkov(self.table, AWS_MANAGED_KEY_REASON, "CKV_AWS_119")
