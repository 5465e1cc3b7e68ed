"""What a team's service imports: the push contract's signature check, request models and errors.

Importable without boto3, aws-cdk or Powertools (standard library and pydantic only).
Framework adapters: `microprocess.service.asgi` (plain ASGI: `TaskApp`, `BodyLimit`) and
`microprocess.service.fastapi_routes` (`task_router`, `signed_task`). The contract itself:
docs/push-contract.md.
"""

from microprocess.service.rotation import CachedSecret, secret_from_environment
from microprocess.service.signing import (
    IDEMPOTENCY_HEADER,
    MAX_BODY_BYTES,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ReplayGuard,
    SignatureError,
    current_secret,
    parse_secrets,
    sign_request,
    signature_base,
    verify,
)
from microprocess.service.tasks import (
    CompletionRequest,
    PermanentFailure,
    Rejected,
    RetryLater,
    TaskRequest,
    Verifier,
)

__all__ = [
    "IDEMPOTENCY_HEADER",
    "MAX_BODY_BYTES",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "CachedSecret",
    "CompletionRequest",
    "PermanentFailure",
    "Rejected",
    "ReplayGuard",
    "RetryLater",
    "SignatureError",
    "TaskRequest",
    "Verifier",
    "current_secret",
    "parse_secrets",
    "secret_from_environment",
    "sign_request",
    "signature_base",
    "verify",
]
