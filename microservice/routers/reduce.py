"""Queue role: the signed reduce-part and finalize tasks of the credit-scores job.

Paths come from the job declaration (`CREDIT_SCORES.reduce_part_path`, `.reduce_finalize_path`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from microservice.declared import JOB as CREDIT_SCORES
from microservice.dependencies import AwsDep, LedgerDep, SettingsDep
from microservice.reduce import ReduceRequest, finalize, reduce_part
from microservice.security import body_schema, signed_body

router = APIRouter(tags=["reduce"])

if CREDIT_SCORES.reduce_part_path is None or CREDIT_SCORES.reduce_finalize_path is None:
    raise RuntimeError(
        "job credit-scores must declare reduce_part_path and reduce_finalize_path (reduce = 'service') "
        "in microprocess.toml: this service's reduce routes are those paths"
    )
PART_PATH: str = CREDIT_SCORES.reduce_part_path
FINALIZE_PATH: str = CREDIT_SCORES.reduce_finalize_path

SignedReducePart = Annotated[ReduceRequest, Depends(signed_body(ReduceRequest, kind="reduce-part"))]
SignedFinalize = Annotated[ReduceRequest, Depends(signed_body(ReduceRequest, kind="finalize"))]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "permanent: wrong job or shard"},
    401: {"description": "bad, missing or stale signature; nothing was done"},
    404: {"description": "permanent: the run is not in the ledger"},
    409: {"description": "permanent: the run is not reducing (still running, or cancelled)"},
}


@router.post(PART_PATH, responses=_ERRORS, openapi_extra=body_schema(ReduceRequest))
def reduce_part_task(req: SignedReducePart, ledger: LedgerDep, aws: AwsDep, settings: SettingsDep) -> dict[str, Any]:
    """Reduce one ledger shard into `parts/part-<kkk>.csv` and `.json`; the answer is the part's statistics."""
    return reduce_part(
        ledger, aws.s3, settings.reports_bucket, CREDIT_SCORES, req, part_bytes=settings.report_part_bytes
    )


@router.post(
    FINALIZE_PATH,
    responses={**_ERRORS, 502: {"description": "retry: the email failed (the report is written)"}},
    openapi_extra=body_schema(ReduceRequest),
)
def finalize_task(req: SignedFinalize, ledger: LedgerDep, aws: AwsDep, settings: SettingsDep) -> dict[str, Any]:
    """Join the parts into report.csv, write summary.json, report.html, failures.csv; mail the report once.

    Answer: `{"report_uri": "s3://<bucket>/reports/<job>/<run>/", "summary": {...}, "email": ...}`.
    """
    return finalize(
        ledger,
        aws.s3,
        aws.ses,
        settings.reports_bucket,
        CREDIT_SCORES,
        req,
        sender=settings.ses_sender,
        part_bytes=settings.report_part_bytes,
        link_expiry_s=settings.report_link_expiry_s,
    )
