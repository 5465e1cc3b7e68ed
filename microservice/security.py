"""Signed requests: every `/tasks/*` call must carry a valid, fresh HMAC signature.

The check runs on the raw body *before* the body is parsed or anything is read or
written, so a bad, missing or stale signature gets 401 and nothing happens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from microprocess.service.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, SignatureError, verify
from microservice.aws import AwsClients, get_aws
from microservice.errors import ServiceError
from microservice.settings import Settings, get_settings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def signing_secret(settings: Settings, aws: AwsClients) -> str:
    """The HMAC secret: `SIGNING_SECRET`, else the Secrets Manager secret `SIGNING_SECRET_ARN` (cached)."""
    if settings.signing_secret:
        return settings.signing_secret
    if settings.signing_secret_arn:
        return aws.secret_string(settings.signing_secret_arn)
    raise ServiceError(500, "no_signing_secret", "set SIGNING_SECRET or SIGNING_SECRET_ARN to accept tasks")


def signed_body(model: type[M]) -> Callable[..., Awaitable[M]]:
    """A dependency that verifies the request's signature, then parses its body into `model`.

    401 `bad_signature` for a missing, wrong or stale signature; 422 `invalid_request`
    for a signed body that does not match `model`; 400 `idempotency_key_mismatch` when an
    `Idempotency-Key` header is present and is not `<run_id>:<task_id>` of the body.
    """

    async def dependency(
        request: Request,
        settings: Annotated[Settings, Depends(get_settings)],
        aws: Annotated[AwsClients, Depends(get_aws)],
    ) -> M:
        raw = await request.body()
        # The secret may need one Secrets Manager call (blocking): keep it off the event loop.
        secret = settings.signing_secret or await run_in_threadpool(signing_secret, settings, aws)
        try:
            verify(
                secret,
                raw,
                request.headers.get(TIMESTAMP_HEADER),
                request.headers.get(SIGNATURE_HEADER),
                max_skew_s=settings.signature_max_skew_s,
            )
        except SignatureError as exc:
            log.warning("rejected %s %s: %s", request.method, request.url.path, exc)
            raise ServiceError(401, "bad_signature", f"request refused: {exc}") from None
        try:
            payload = model.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise ServiceError(422, "invalid_request", f"body does not match {model.__name__}: {problems}") from None
        key = request.headers.get(IDEMPOTENCY_HEADER)
        expected = f"{getattr(payload, 'run_id', '')}:{getattr(payload, 'task_id', '')}"
        if key is not None and key != expected:
            raise ServiceError(
                400,
                "idempotency_key_mismatch",
                f"{IDEMPOTENCY_HEADER} is {key!r} but the body is task {expected!r}; send '<run_id>:<task_id>'",
            )
        return payload

    return dependency


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI `requestBody` for a route that parses its body itself (after the signature check)."""
    schema = json.loads(json.dumps(model.model_json_schema()))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
