"""The HMAC key that signs every push from the forwarder to one service."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.nag import acknowledge, skip_checkov

#: Why a secret keeps the AWS-managed key rather than a customer-managed one (checkov CKV_AWS_149).
AWS_MANAGED_KEY_REASON = (
    "Encrypted with the AWS-managed key aws/secretsmanager. A customer-managed key would add a key policy to "
    "keep in step with the grants and narrow no reader: only the roles granted read by name can read it."
)

KEY_LENGTH = 64


class SigningSecret(Construct):
    """A generated Secrets Manager secret (64 alphanumeric characters).

    Nobody can read it until a `grant_read` says so: the stack grants it to the forwarder,
    the reducer and (a bundled service) the service's queue role only.

    Args:
        service_name: the service whose pushes it signs.
        removal_policy: what happens to the secret when the stack is deleted.

    Attributes:
        secret: the `secretsmanager.Secret`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        service_name: str,
        removal_policy: RemovalPolicy = RemovalPolicy.DESTROY,
    ) -> None:
        super().__init__(scope, construct_id)
        self.secret = secretsmanager.Secret(
            self,
            "Secret",
            description=f"microprocess: HMAC key signing the pushes to the service '{service_name}'",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=KEY_LENGTH, exclude_punctuation=True, include_space=False
            ),
            removal_policy=removal_policy,
        )
        acknowledge(
            self.secret,
            "Automatic rotation would break the pushes in flight: the forwarder and the service "
            "cache the key per process and accept one key at a time. Rotate by putting a new value "
            "and restarting both (see infra/README.md).",
            "AwsSolutions-SMG4",
        )
        skip_checkov(self.secret, AWS_MANAGED_KEY_REASON, "CKV_AWS_149")
