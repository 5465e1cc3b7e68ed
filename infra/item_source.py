"""A DynamoDB table jobs read their items from: one per declared `[tables.<role>]`."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from .ledger import AWS_MANAGED_KEY_REASON
from .nag import skip_checkov


class ItemSourceTable(Construct):
    """An on-demand table keyed by the item id, with point-in-time recovery and encryption.

    Args:
        partition_key: the declared partition key (string), e.g. `company_id`.
        point_in_time_recovery: keep continuous backups.
        removal_policy: what happens to the table when the stack is deleted.

    Attributes:
        table: the `dynamodb.Table`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        partition_key: str,
        point_in_time_recovery: bool = True,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, construct_id)
        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name=partition_key, type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=point_in_time_recovery
            ),
            removal_policy=removal_policy,
        )
        skip_checkov(self.table, AWS_MANAGED_KEY_REASON, "CKV_AWS_119")
