"""A run id starts with its job's name and a dash (`microprocess.declarations.run_keys`): the prefix that
grants a service's reduce its own jobs' ledger keys only (`infra/service_roles.py`). The deployed splitter
refuses a new run named otherwise; every id the platform makes follows it; overlapping job names that would
share a prefix across services are refused when declared."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from microprocess.declarations import JobDeclarationError, load_declarations
from microprocess.declarations.run_keys import job_keys_pattern, run_id_refusal
from microprocess.ledger.records import _counter_pk, _run_pk, _shard_pk
from microprocess.pipeline.splitter import Splitter
from microprocess.pipeline.start import StartEventError, new_run_id, scheduled_run_id
from tests.declared import ROOT
from tests.functions_harness import JOB, Stack, stack  # noqa: F401 - the fixture

ENOUGH_TIME = lambda: 900_000  # noqa: E731 - remaining Lambda time, ms


def test_the_ids_the_platform_makes_follow_the_rule_and_others_are_refused_naming_the_fix() -> None:
    assert run_id_refusal("credit-scores", new_run_id("credit-scores")) is None
    assert run_id_refusal("credit-scores", scheduled_run_id("credit-scores", "2026-12-01T02:00:00Z")) is None
    assert run_id_refusal("credit-scores", "credit-scores-rerun-1") is None
    for bad in ("r1", "credit-scores", "credit-scores-", "credit-scoresX-1", "invoice-reminders-20261201T080000Z"):
        refusal = run_id_refusal("credit-scores", bad)
        assert refusal is not None and "'credit-scores-'" in refusal and "leave run_id out" in refusal, bad
    # every ledger key of a run starts with the pattern's prefix
    pattern = job_keys_pattern("credit-scores")
    run_id = new_run_id("credit-scores")
    for key in (_run_pk(run_id), _counter_pk(run_id, 3), _shard_pk(run_id, 12)):
        assert key.startswith(pattern.rstrip("*")), key


def test_the_deployed_splitter_enforces_the_rule_by_default() -> None:
    # the runtime's wiring (`runtime.splitter`) passes no rule: the default is the one that refuses
    assert inspect.signature(Splitter).parameters["run_id_rule"].default is run_id_refusal


def test_a_new_run_with_a_free_id_is_refused_before_anything_is_written(stack: Stack) -> None:  # noqa: F811
    splitter = stack.splitter(run_id_rule=run_id_refusal)
    event: dict[str, Any] = {"job": JOB.name, "run_id": "r1", "items": [{"company_id": "C1"}]}
    with pytest.raises(StartEventError, match=r"run_id 'r1' does not start with its job's name.*'credit-scores-'"):
        splitter.handle(event, ENOUGH_TIME)
    assert stack.ledger.get_run("r1") is None
    # the same run under a conforming id starts; a platform-made id too
    res = splitter.handle({**event, "run_id": "credit-scores-r1"}, ENOUGH_TIME)
    assert res["run_id"] == "credit-scores-r1" and res["expected"] == 1
    made = splitter.handle({"job": JOB.name, "items": [{"company_id": "C2"}]}, ENOUGH_TIME)
    assert made["run_id"].startswith("credit-scores-")


def test_a_run_started_before_the_rule_goes_on(stack: Stack) -> None:  # noqa: F811
    # GIVEN a run with a free id, created before the rule (the splitter then had none)
    stack.split({"job": JOB.name, "run_id": "old-run", "items": [{"company_id": "C1"}]})
    # WHEN the sweeper restarts its splitter with the rule on THEN it is not refused
    res = stack.splitter(run_id_rule=run_id_refusal).handle(
        {"job": JOB.name, "run_id": "old-run", "source": "sweeper"}, ENOUGH_TIME
    )
    assert res["run_id"] == "old-run"


def declarations_with(tmp_path: Path, extra: str) -> Path:
    file = tmp_path / "microprocess.toml"
    file.write_text((ROOT / "microprocess.toml").read_text() + extra)
    return file


def test_job_names_that_would_share_run_keys_across_services_are_refused(tmp_path: Path) -> None:
    # GIVEN credit-scores (reduced by its service, scores) and a job of another service named credit-scores-...
    overlapping = """
[jobs.credit-scores-daily]
service = "reminders"
schedule = "cron(0 3 * * ? *)"
source = { kind = "inline" }
item_id_field = "company_id"
task_path = "/tasks/remind"
"""
    with pytest.raises(JobDeclarationError, match=r"'credit-scores' and 'credit-scores-daily'.*Rename one"):
        load_declarations(declarations_with(tmp_path, overlapping))
    # the same job on the same service shares its service's grant: accepted
    same_service = overlapping.replace('service = "reminders"', 'service = "scores"')
    assert "credit-scores-daily" in load_declarations(declarations_with(tmp_path, same_service)).jobs.names()
    # neither reduced by its service: no role is scoped by the prefix, accepted
    unscoped = overlapping.replace("[jobs.credit-scores-daily]", "[jobs.invoice-reminders-daily]")
    assert "invoice-reminders-daily" in load_declarations(declarations_with(tmp_path, unscoped)).jobs.names()
