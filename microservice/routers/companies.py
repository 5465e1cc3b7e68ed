"""Live role: read a company, score it now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from microservice.dependencies import CompanyStoreDep, SettingsDep
from microservice.scoring import LiveScore, live_score

router = APIRouter(prefix="/companies", tags=["companies"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": 'unknown company: `{"error": "company_not_found", "message": ...}`'}
}


@router.get("/{company_id}", responses=_NOT_FOUND)
def get_company(company_id: str, store: CompanyStoreDep) -> dict[str, Any]:
    """The company record as stored (with `score`, `band`, `scored_at`, `scored_by_run` once scored)."""
    return store.require(company_id)


@router.get("/{company_id}/score", responses=_NOT_FOUND)
def get_company_score(company_id: str, store: CompanyStoreDep, settings: SettingsDep) -> LiveScore:
    """The company's credit score computed now from its stored attributes (nothing is written)."""
    return live_score(store, company_id, work_ms=settings.score_work_ms)
