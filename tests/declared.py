"""The repository's own declarations, as the tests read them (the examples' jobs and services)."""

from __future__ import annotations

from pathlib import Path

from microprocess.declarations import load_declarations

ROOT = Path(__file__).resolve().parents[1]
DECLARATIONS = load_declarations(ROOT / "microprocess.toml")
JOBS = DECLARATIONS.jobs
CREDIT_SCORES = JOBS.get("credit-scores")
INVOICE_REMINDERS = JOBS.get("invoice-reminders")
