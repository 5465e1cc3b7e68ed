"""The bucket that receives access logs: ALB access logs, S3 server access logs, VPC flow logs."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from .nag import skip_checkov
from .reports import noncurrent_versions_rule

DEFAULT_RETENTION_DAYS = 90


class AccessLogBucket(Construct):
    """A private, TLS-only bucket for logs, expiring them after `retention_days`.

    S3-managed encryption (SSE-S3), because ALB access logs cannot be written with KMS.
    Versioned, so that a deleted or overwritten log object can be recovered for a week.

    Args:
        retention_days: days after which log objects expire.
        removal_policy: what happens to the bucket when the stack is deleted.

    Attributes:
        bucket: the `s3.Bucket`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        retention_days: int = DEFAULT_RETENTION_DAYS,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, construct_id)
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(id="expire-logs", expiration=Duration.days(retention_days)),
                noncurrent_versions_rule(),
            ],
            versioned=True,
            removal_policy=removal_policy,
        )
        skip_checkov(
            self.bucket,
            "This bucket is the access-log destination of the stage (ALBs, the reports bucket, VPC flow logs); "
            "logging its own accesses would need a second log bucket, or log into itself in a loop.",
            "CKV_AWS_18",
        )
