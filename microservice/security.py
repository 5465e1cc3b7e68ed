"""Signed requests: every `/tasks/*` call is checked by the platform's service SDK.

`microprocess.service` verifies signature v2 on the raw body *before* it is parsed or
anything is read or written (docs/push-contract.md), so a bad, missing, stale, future-dated
or replayed signature gets 401 and nothing happens. This module only says where the
secret comes from and which model and kind each route takes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from pydantic import BaseModel

from microprocess.service.fastapi_routes import signed_task
from microprocess.service.rotation import CachedSecret
from microprocess.service.signing import DEFAULT_MAX_FUTURE_S, ReplayGuard
from microprocess.service.tasks import Verifier
from microservice.aws import AwsClients, get_aws
from microservice.errors import ServiceError
from microservice.settings import Settings, get_settings

M = TypeVar("M", bound=BaseModel)


def signing_secret(settings: Settings, aws: AwsClients) -> str:
    """The secret value: `SIGNING_SECRET`, else the Secrets Manager secret `SIGNING_SECRET_ARN`.

    The value may hold two secrets during a rotation (`{"current": ..., "previous": ...}`).
    """
    if settings.signing_secret:
        return settings.signing_secret
    if settings.signing_secret_arn:
        return str(aws.secretsmanager.get_secret_value(SecretId=settings.signing_secret_arn)["SecretString"])
    raise ServiceError(500, "no_signing_secret", "set SIGNING_SECRET or SIGNING_SECRET_ARN to accept tasks")


def install_verifier(app: FastAPI, settings: Settings) -> None:
    """One `Verifier` per app: the secret (read lazily, re-read on rotation) and a replay guard."""

    def load() -> str:
        # Resolved per read so tests' `dependency_overrides[get_aws]` apply.
        aws_factory = app.dependency_overrides.get(get_aws, get_aws)
        return signing_secret(settings, aws_factory())

    app.state.verifier = Verifier(
        CachedSecret(load),
        max_age_s=settings.signature_max_skew_s,
        replay_guard=ReplayGuard(ttl_s=settings.signature_max_skew_s + DEFAULT_MAX_FUTURE_S),
    )


def signed_body(model: type[M], *, kind: str) -> Callable[[Request], Awaitable[M]]:
    """A dependency: the verified body parsed into `model`, of the route's `kind`.

    413 over the contract's size limit; 401 `bad_signature`; 400 `malformed_body` (not JSON,
    or numbers out of range); 422 `invalid_request` (not `model`); 400 `wrong_kind`;
    400 `idempotency_key_mismatch` when `Idempotency-Key` is not `<run_id>:<task_id>`.
    """

    def verifier_of(request: Request) -> Verifier:
        verifier = getattr(request.app.state, "verifier", None)
        if verifier is None:  # an app assembled without create_app: the environment's settings
            install_verifier(request.app, get_settings())
            verifier = request.app.state.verifier
        assert isinstance(verifier, Verifier)
        return verifier

    async def dependency(request: Request) -> M:
        inner = signed_task(model, kind=kind, verifier=lambda: verifier_of(request))
        return await inner(request)

    return dependency


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` for a route that parses its body itself (after the signature check)."""
    schema = json.loads(json.dumps(model.model_json_schema()))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
