"""A DynamoDB table a job reads its items from (e.g. the `companies` role)."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from constructs import Construct

from microprocess.declarations import JobDeclaration, SourceKind


def source_partition_key(jobs: list[JobDeclaration], role: str) -> str:
    """The partition key of the source table `role`: the `item_id_field` of the jobs reading it.

    Raises ValueError naming the jobs when they disagree or none reads the role.
    """
    keys = {job.item_id_field for job in jobs if job.source.kind is SourceKind.DYNAMODB and job.source.table == role}
    if len(keys) != 1:
        readers = [job.name for job in jobs if job.source.table == role]
        raise ValueError(
            f"source table '{role}': the jobs reading it ({readers or 'none'}) must declare one "
            f"item_id_field as its key; found {sorted(keys) or 'none'}"
        )
    return keys.pop()


class ItemSourceTable(Construct):
    """An on-demand table keyed by the item id, with point-in-time recovery and encryption.

    Args:
        partition_key: the item id attribute (string), e.g. `company_id`.
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
