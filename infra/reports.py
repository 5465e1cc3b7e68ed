"""Where reports go: the reports bucket and the SES identity that mails them."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_ses as ses
from constructs import Construct

#: Prefixes whose objects are intermediate and expire: quarantined DLQ messages,
#: claim-checked items, the splitter's kept pages and run-time manifests (needed only while
#: their run is in flight).
EXPIRING_PREFIXES = ("quarantine/", "claims/", "splits/", "manifests/")
#: The report part files live at `reports/<job>/<run>/parts/`. An S3 lifecycle filter
#: matches a literal prefix only (no `*` in the middle), so the parts expire by tag: the
#: writer of a part file tags it with this key and value.
PARTS_PREFIX = "reports/"
PART_TAG_KEY = "microprocess:lifecycle"
PART_TAG_VALUE = "intermediate"
DEFAULT_EXPIRY_DAYS = 30
#: Days an overwritten or deleted object's previous version is kept (a versioned bucket).
NONCURRENT_EXPIRY_DAYS = 7


class Reports(Construct):
    """The reports bucket and the sender's SES email identity.

    Safe defaults: all public access blocked, TLS enforced, S3-managed encryption, object
    ownership enforced (no ACLs), intermediate objects (report parts, quarantined messages,
    claim-checked items) expiring after `expiry_days`, incomplete multipart uploads
    aborted after a day. Versioned (cloud): an overwritten or deleted report can be recovered
    for `NONCURRENT_EXPIRY_DAYS`, after which the old version and its delete marker go.

    Args:
        sender: the email address the reports are sent from.
        expiry_days: days after which intermediate objects expire.
        server_access_logs_bucket: where S3 server access logs go; None disables them.
        versioned: keep previous versions of overwritten and deleted objects for
            `NONCURRENT_EXPIRY_DAYS` (the local stage turns it off: the emulator's bucket is scratch).
        removal_policy: what happens to the bucket when the stack is deleted.

    Attributes:
        bucket: the `s3.Bucket`.
        email_identity: the `ses.EmailIdentity` of the sender.
        sender: the sender address.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        sender: str,
        expiry_days: int = DEFAULT_EXPIRY_DAYS,
        server_access_logs_bucket: s3.IBucket | None = None,
        versioned: bool = True,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, construct_id)
        if expiry_days < 1:
            raise ValueError(f"expiry_days must be at least 1 (got {expiry_days})")
        expiry = Duration.days(expiry_days)
        rules = [
            s3.LifecycleRule(id=f"expire-{prefix.strip('/')}", prefix=prefix, expiration=expiry)
            for prefix in EXPIRING_PREFIXES
        ]
        rules.append(
            s3.LifecycleRule(
                id="expire-report-parts",
                prefix=PARTS_PREFIX,
                tag_filters={PART_TAG_KEY: PART_TAG_VALUE},
                expiration=expiry,
            )
        )
        rules.append(
            s3.LifecycleRule(id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=Duration.days(1))
        )
        if versioned:
            rules.append(noncurrent_versions_rule())
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=rules,
            versioned=versioned,
            server_access_logs_bucket=server_access_logs_bucket,
            server_access_logs_prefix="s3/reports/" if server_access_logs_bucket else None,
            removal_policy=removal_policy,
        )
        self.sender = sender
        self.email_identity = ses.EmailIdentity(self, "Sender", identity=ses.Identity.email(sender))


def noncurrent_versions_rule() -> s3.LifecycleRule:
    """The lifecycle rule of a versioned bucket: previous versions expire after
    `NONCURRENT_EXPIRY_DAYS`, and a delete marker left with no versions behind it is removed."""
    return s3.LifecycleRule(
        id="expire-noncurrent-versions",
        noncurrent_version_expiration=Duration.days(NONCURRENT_EXPIRY_DAYS),
        expired_object_delete_marker=True,
    )
