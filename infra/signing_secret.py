"""The HMAC key that signs every push from the forwarder to one service."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from .nag import acknowledge, skip_checkov

#: Why a secret keeps the AWS-managed key rather than a customer-managed one (checkov CKV_AWS_149).
AWS_MANAGED_KEY_REASON = (
    "Encrypted with the AWS-managed key aws/secretsmanager. A customer-managed key would add a key policy to "
    "keep in step with the grants and narrow no reader: only the roles granted read by name can read it."
)

KEY_LENGTH = 64


class GeneratedSecret(Construct):
    """A generated alphanumeric Secrets Manager secret (`secret`, construct id `Secret`) for one
    service. Automatic rotation is off (`WHY_NOT_ROTATED`: a rotation is a coordinated step); the
    AWS-managed key encrypts it (`AWS_MANAGED_KEY_REASON`). Subclasses say what it is for.

    Args:
        service_name: the service it belongs to.
        removal_policy: what happens to the secret when the stack is deleted.

    Attributes:
        secret: the `secretsmanager.Secret`.
    """

    #: The secret's description; `{service}` is the service's name.
    DESCRIPTION: str = "microprocess: a generated secret of the service '{service}'"
    LENGTH: int = KEY_LENGTH
    WHY_NOT_ROTATED: str = "A rotation is a coordinated step, not a timer (see infra/README.md)."

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
            description=self.DESCRIPTION.format(service=service_name),
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=self.LENGTH, exclude_punctuation=True, include_space=False
            ),
            removal_policy=removal_policy,
        )
        acknowledge(self.secret, self.WHY_NOT_ROTATED, "AwsSolutions-SMG4")
        skip_checkov(self.secret, AWS_MANAGED_KEY_REASON, "CKV_AWS_149")


class SigningSecret(GeneratedSecret):
    """The HMAC key of one service (64 alphanumeric characters).

    Nobody can read it until a `grant_read` says so: the stack grants it to the forwarder,
    the reducer and (a bundled service) the service's queue role only.
    """

    DESCRIPTION = "microprocess: HMAC key signing the pushes to the service '{service}'"
    WHY_NOT_ROTATED = (
        "A rotation is a coordinated step, not a timer: put {current, previous}, let the service and the "
        "forwarder re-read it (they accept both and re-read on a mismatch or a 401), then drop previous "
        "(see infra/README.md)."
    )
