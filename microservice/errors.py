"""Errors the service answers with: one JSON shape, `{"error": <code>, "message": <text>}`.

The forwarder reads the status: 4xx (but 408/429) is a permanent failure, so a
4xx is only used for what a retry cannot fix.
"""

from __future__ import annotations

from botocore.exceptions import EndpointConnectionError, NoCredentialsError, NoRegionError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class ServiceError(Exception):
    """An error answer: HTTP status, a stable machine code and a message that says what to do."""

    def __init__(self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class CompanyNotFound(ServiceError):
    def __init__(self, company_id: str, table: str) -> None:
        super().__init__(404, "company_not_found", f"company {company_id!r} is not in the companies table {table!r}")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


async def _service_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _aws_setup_error_handler(_: Request, exc: Exception) -> JSONResponse:
    # A service started without its AWS settings (e.g. run alone on a laptop): say which setting
    # is missing instead of a bare 500. 503: the request may succeed once the setting is fixed.
    fixes = {
        NoRegionError: "no AWS region is set: export AWS_DEFAULT_REGION (e.g. us-east-1)",
        NoCredentialsError: "no AWS credentials: export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
        EndpointConnectionError: "the AWS endpoint does not answer: is AWS_ENDPOINT_URL right (local stack up?)",
    }
    message = next((fix for kind, fix in fixes.items() if isinstance(exc, kind)), str(exc))
    return error_response(503, "aws_not_configured", f"{message} ({type(exc).__name__})")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error_handler)
    for kind in (NoRegionError, NoCredentialsError, EndpointConnectionError):
        app.add_exception_handler(kind, _aws_setup_error_handler)
