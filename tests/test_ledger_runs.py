"""`microprocess.ledger.runs`: creating, reading, listing and cancelling runs (moto)."""

from __future__ import annotations

import pytest

from microprocess.declarations import declare
from microprocess.ledger import (
    Ledger,
    LedgerError,
    RunNotFound,
    RunStatus,
)
from tests.ledger_scenarios import JOB


def test_create_run_is_idempotent_and_refuses_another_job(ledger: Ledger) -> None:
    # GIVEN a new run id WHEN created twice THEN the second call returns the same run, not created
    run, created = ledger.create_run("r1", JOB)
    again, created_again = ledger.create_run("r1", JOB)
    assert created and not created_again
    assert again.created_at == run.created_at and again.status is RunStatus.SPLITTING
    # AND the same id for another job is refused with a message naming both jobs
    other = declare(**{**JOB.model_dump(), "name": "other-job"})
    with pytest.raises(LedgerError, match=r"credit-scores.*other-job"):
        ledger.create_run("r1", other)


def test_unknown_run_is_a_clear_error(ledger: Ledger) -> None:
    with pytest.raises(RunNotFound, match="r-missing"):
        ledger.progress("r-missing")
    assert ledger.get_run("r-missing") is None


def test_cancel(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    assert ledger.cancel("r1") is True
    assert ledger.cancel("r1") is False
    assert ledger.require_run("r1").status is RunStatus.CANCELLED
    with pytest.raises(RunNotFound):
        ledger.cancel("nope")


def test_list_runs_newest_first(ledger: Ledger) -> None:
    for r in ("r1", "r2", "r3"):
        ledger.create_run(r, JOB)
    assert [r.run_id for r in ledger.list_runs(JOB.name)] == ["r3", "r2", "r1"]
    ledger.cancel("r2")
    assert [r.run_id for r in ledger.active_runs([JOB.name])] == ["r3", "r1"]
