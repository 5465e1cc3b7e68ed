"""Scoring: the live score of a company, and the queue task that computes and stores it."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, Field

from microprocess.service.tasks import TaskRequest
from microservice.companies import CompanyStore
from microservice.domain import SCORING_FIELDS, credit_score, score_factors
from microservice.errors import ServiceError


class CreditScoreTask(TaskRequest[dict[str, Any]]):
    """Body of `POST /tasks/credit-score` (the forwarder's push, kind `task`).

    `item` is the company: at least `company_id`; other attributes are optional.
    """


class CreditScoreResult(BaseModel):
    """The task's result, recorded in the ledger and written to the report."""

    company_id: str
    score: int = Field(ge=0, le=1000)
    band: str


class LiveScore(CreditScoreResult):
    factors: dict[str, int] = Field(description="points per factor; they add up to the score before clamping")


def _simulate_work(work_ms: int) -> None:
    if work_ms:
        time.sleep(work_ms / 1000)


def _score(company: dict[str, Any]) -> tuple[int, str]:
    try:
        return credit_score(company)
    except (ValueError, OverflowError) as exc:
        raise ServiceError(400, "unscorable_company", str(exc)) from None


def live_score(store: CompanyStore, company_id: str, *, work_ms: int = 0) -> LiveScore:
    """Score a company from the table now, without storing anything."""
    company = store.require(company_id)
    score, band = _score(company)
    _simulate_work(work_ms)
    return LiveScore(company_id=company_id, score=score, band=band, factors=score_factors(company))


def run_credit_score_task(store: CompanyStore, task: CreditScoreTask, *, work_ms: int = 0) -> CreditScoreResult:
    """Score the task's company and store the score on its record.

    The item is scored as sent when it carries every scoring attribute; otherwise the
    company is read from the table. Idempotent: the score is a pure function of the
    company, and a repeated push for the same run stores nothing new.
    """
    company_id = task.item.get("company_id")
    if not isinstance(company_id, str) or not company_id:
        raise ServiceError(400, "missing_company_id", "item.company_id must be a non-empty string")
    company = task.item if all(task.item.get(f) is not None for f in SCORING_FIELDS) else store.require(company_id)
    score, band = _score(company)
    _simulate_work(work_ms)
    store.store_score(company_id, score=score, band=band, run_id=task.run_id)
    return CreditScoreResult(company_id=company_id, score=score, band=band)
