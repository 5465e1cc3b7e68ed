"""`microprocess.ledger.split`: split accounting, page by page, and the split's end (moto)."""

from __future__ import annotations

import pytest

from microprocess.ledger import (
    CURSOR_DONE,
    Ledger,
    LedgerError,
    RunNotActive,
    RunStatus,
)
from tests.ledger_scenarios import JOB


def test_account_page_moves_the_cursor_once(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    assert ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=5)
    # a resumed splitter re-sending the same page does not count it again
    assert not ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=5)
    run = ledger.require_run("r1")
    assert run.expected == 5 and run.cursors == {"0": "p1"} and run.seg_counts == {"0": 5}


def test_account_page_after_cancel_raises(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    assert ledger.cancel("r1")
    with pytest.raises(RunNotActive, match="CANCELLED"):
        ledger.account_page("r1", segment="0", cursor_from="", cursor_to="p1", count=5)


def test_finish_split_refuses_unread_segments(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB, segments=2)
    ledger.account_page("r1", segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=3)
    with pytest.raises(LedgerError, match=r"\['1'\]"):
        ledger.finish_split("r1")


def test_empty_source_claims_the_reduce_at_once(ledger: Ledger) -> None:
    ledger.create_run("r1", JOB)
    ledger.account_page("r1", segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=0)
    assert ledger.finish_split("r1") is True
    assert ledger.require_run("r1").status is RunStatus.REDUCING
    assert ledger.finish_split("r1") is False  # idempotent, never a second claim
