"""Queue role: the signed credit-score task, pushed by the forwarder."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from microservice.declared import JOB as CREDIT_SCORES
from microservice.dependencies import CompanyStoreDep, SettingsDep
from microservice.scoring import CreditScoreResult, CreditScoreTask, run_credit_score_task
from microservice.security import body_schema, signed_body

router = APIRouter(tags=["tasks"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "permanent: the item has no company_id, or the Idempotency-Key does not match"},
    401: {"description": "bad, missing or stale signature; nothing was done"},
    404: {"description": "permanent: the company is not in the companies table"},
    422: {"description": "permanent: the body is not a task"},
}


@router.post(CREDIT_SCORES.task_path, responses=_ERRORS, openapi_extra=body_schema(CreditScoreTask))
def credit_score_task(
    task: Annotated[CreditScoreTask, Depends(signed_body(CreditScoreTask, kind="task"))],
    store: CompanyStoreDep,
    settings: SettingsDep,
) -> CreditScoreResult:
    """Compute the company's score and store it on its record; the answer is the task result."""
    return run_credit_score_task(store, task, work_ms=settings.score_work_ms)
