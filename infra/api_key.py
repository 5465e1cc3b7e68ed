"""The key of a bundled service's public live API (`<service>-live`), sent by clients in `X-Api-Key`."""

from __future__ import annotations

from aws_cdk import RemovalPolicy
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.nag import acknowledge, skip_checkov
from infra.signing_secret import AWS_MANAGED_KEY_REASON

KEY_LENGTH = 40


class ApiKeySecret(Construct):
    """A generated Secrets Manager secret (40 alphanumeric characters): the live API's key.

    Nobody can read it until a `grant_read` says so: the stack grants it to the service's live
    role only (its ARN goes to the container as `API_KEY_SECRET_ARN`). Clients get the key from
    whoever may read the secret. During a rotation it may hold `{"current": ..., "previous": ...}`.

    Args:
        service_name: the bundled service whose live role it opens.
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
            description=f"microprocess: the API key of {service_name}-live (clients send it in X-Api-Key)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=KEY_LENGTH, exclude_punctuation=True, include_space=False
            ),
            removal_policy=removal_policy,
        )
        acknowledge(
            self.secret,
            "The key is handed to the API's clients out of band, so a new key is a coordinated step "
            "({current, previous}, clients move, previous dropped; see infra/README.md), not a timer.",
            "AwsSolutions-SMG4",
        )
        skip_checkov(self.secret, AWS_MANAGED_KEY_REASON, "CKV_AWS_149")
