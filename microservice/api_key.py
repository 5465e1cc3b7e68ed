"""The live API's key: every `/companies` call sends it in the `X-Api-Key` header.

The key comes from `API_KEY` (the value) or `API_KEY_SECRET_ARN` (the Secrets Manager secret
the stack generates and lets only the live role read). The secret may hold
`{"current": ..., "previous": ...}` during a rotation: both are accepted. The value is read on
first use and kept; it is re-read every minute whatever the traffic (a rotated key works, and
a dropped one stops working, within a minute, without a restart), and a key the process does
not know makes it re-read sooner (at most once per 30 s: a flood of bad keys costs one read per
interval and cannot delay the scheduled one). Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import APIKeyHeader

from microprocess.service.rotation import CachedSecret, SecretUnavailable
from microprocess.service.signing import parse_secrets
from microservice.aws import AwsClients, get_aws
from microservice.errors import ServiceError
from microservice.settings import Settings, get_settings

API_KEY_HEADER = "X-Api-Key"

#: The header in the OpenAPI schema (the docs' "Authorize" button); the check is `require_api_key`.
api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="The live API's key (the stack's `ApiKeyArns` output names the secret holding it).",
)


def api_key_value(settings: Settings, aws: AwsClients) -> str:
    """The key's value: `API_KEY`, else the Secrets Manager secret `API_KEY_SECRET_ARN`."""
    if settings.api_key:
        return settings.api_key
    if settings.api_key_secret_arn:
        return str(aws.secretsmanager.get_secret_value(SecretId=settings.api_key_secret_arn)["SecretString"])
    raise ServiceError(500, "no_api_key", "set API_KEY or API_KEY_SECRET_ARN: the live API accepts no call without")


class ApiKeys:
    """The keys the live API accepts, from a `CachedSecret`."""

    def __init__(self, secret: CachedSecret) -> None:
        self._secret = secret

    def _accepted(self) -> tuple[str, ...]:
        try:
            return parse_secrets(self._secret())
        except SecretUnavailable as exc:
            raise ServiceError(
                503,
                "api_key_unavailable",
                f"the API cannot check keys yet ({exc}); retry later",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        except ValueError as exc:
            raise ServiceError(
                500, "bad_api_key_secret", f"the API key secret is not a key or {{'current','previous'}}: {exc}"
            ) from None

    def _matches(self, given: bytes) -> bool:
        matched = False
        for key in self._accepted():  # every key compared, in constant time: no early exit to time
            matched |= hmac.compare_digest(given, key.encode())
        return matched

    def check(self, given: str | None) -> None:
        """Return when `given` is an accepted key; raise a 401 `ServiceError` naming the header otherwise."""
        if not given:
            raise ServiceError(
                401,
                "missing_api_key",
                f"this API needs a key: send it in the {API_KEY_HEADER} header ({API_KEY_HEADER}: <key>)",
            )
        candidate = given.encode()
        if self._matches(candidate) or (self._secret.refresh() and self._matches(candidate)):
            return
        raise ServiceError(
            401,
            "invalid_api_key",
            f"the key in the {API_KEY_HEADER} header is not valid: send the current key (it may have been rotated)",
        )


def install_api_keys(app: FastAPI, settings: Settings) -> None:
    """One `ApiKeys` per app, its secret read on first use."""

    def load() -> str:
        # Resolved per read so tests' `dependency_overrides[get_aws]` apply.
        aws_factory = app.dependency_overrides.get(get_aws, get_aws)
        return api_key_value(settings, aws_factory())

    app.state.api_keys = ApiKeys(CachedSecret(load))


def require_api_key(request: Request, given: Annotated[str | None, Security(api_key_header)]) -> None:
    """A dependency: 401 unless the request carries an accepted key in `X-Api-Key`."""
    keys = getattr(request.app.state, "api_keys", None)
    if keys is None:  # an app assembled without create_app: the environment's settings
        install_api_keys(request.app, get_settings())
        keys = request.app.state.api_keys
    assert isinstance(keys, ApiKeys)
    keys.check(given)


#: Put on a router: `APIRouter(dependencies=[ApiKeyRequired])`.
ApiKeyRequired = Depends(require_api_key)
