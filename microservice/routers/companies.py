"""Live role: read a company, score it now; every route needs the API key (`X-Api-Key`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from microservice.api_key import API_KEY_HEADER, ApiKeyRequired
from microservice.dependencies import CompanyStoreDep, SettingsDep
from microservice.scoring import LiveScore, live_score

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {
        "description": f'no or a wrong key in {API_KEY_HEADER}: `{{"error": "missing_api_key" | "invalid_api_key", '
        '"message": ...}`'
    },
    404: {"description": 'unknown company: `{"error": "company_not_found", "message": ...}`'},
}

router = APIRouter(prefix="/companies", tags=["companies"], dependencies=[ApiKeyRequired], responses=_ERRORS)


@router.get("/{company_id}")
def get_company(company_id: str, store: CompanyStoreDep) -> dict[str, Any]:
    """The company record as stored (with `score`, `band`, `scored_at`, `scored_by_run` once scored)."""
    return store.require(company_id)


@router.get("/{company_id}/score")
def get_company_score(company_id: str, store: CompanyStoreDep, settings: SettingsDep) -> LiveScore:
    """The company's credit score computed now from its stored attributes (nothing is written)."""
    return live_score(store, company_id, work_ms=settings.score_work_ms)
