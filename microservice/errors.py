"""Errors the service answers with: one JSON shape, `{"error": <code>, "message": <text>}`.

The forwarder reads the status: 4xx (but 408/429) is a permanent failure, so a
4xx is only used for what a retry cannot fix.
"""

from __future__ import annotations

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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error_handler)
