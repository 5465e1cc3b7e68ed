"""The key of a bundled service's public live API (`<service>-live`), sent by clients in `X-Api-Key`."""

from __future__ import annotations

from .signing_secret import GeneratedSecret

KEY_LENGTH = 40


class ApiKeySecret(GeneratedSecret):
    """A generated Secrets Manager secret (40 alphanumeric characters): the live API's key.

    Nobody can read it until a `grant_read` says so: the stack grants it to the service's live
    role only (its ARN goes to the container as `API_KEY_SECRET_ARN`). Clients get the key from
    whoever may read the secret. During a rotation it may hold `{"current": ..., "previous": ...}`.
    """

    DESCRIPTION = "microprocess: the API key of {service}-live (clients send it in X-Api-Key)"
    LENGTH = KEY_LENGTH
    WHY_NOT_ROTATED = (
        "The key is handed to the API's clients out of band, so a new key is a coordinated step "
        "({current, previous}, clients move, previous dropped; see infra/README.md), not a timer."
    )
