"""Issue 26's rough edges: a declaration error is a message and exit 2 (a traceback only with
--debug), with "did you mean" for a misspelt field; an item without its id is a FAILED task with
the reason; progress outside a terminal is one plain line per interval."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from microprocess.cli import commands as cli
from microprocess.cli import errors
from microprocess.cli.progress import watch_run
from microprocess.control.lookup import RunTasks
from microprocess.declarations import get_declarations
from microprocess.declarations.loading import DECLARATIONS_ENV
from microprocess.ledger import Progress, RunStatus
from tests.functions_harness import Stack

MISSPELT = """
[services.scores]
url = "https://scores.example.com"

[jobs.credit-scores]
service = "scores"
schedule = "rate(1 day)"
task_path = "/tasks"
item_id_feild = "company_id"

[jobs.credit-scores.source]
kind = "inline"
page_sise = 10
"""


@pytest.fixture
def misspelt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "microprocess.toml"
    path.write_text(MISSPELT)
    monkeypatch.setenv(DECLARATIONS_ENV, str(path))
    get_declarations.cache_clear()
    yield path
    get_declarations.cache_clear()
    errors.DebugFlag.on = False


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["microprocess", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    return int(exited.value.code or 0)


def test_a_declaration_error_is_its_message_and_exit_2_with_did_you_mean(
    misspelt: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # WHEN a command reads a declaration file with two misspelt fields
    code = run_main(monkeypatch, "runs")
    # THEN it exits 2 with the message, each misspelling with its closest field, and no traceback
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and str(misspelt) in err
    assert "field 'item_id_feild': Extra inputs are not permitted (did you mean 'item_id_field'?)" in err
    assert "field 'source.page_sise': Extra inputs are not permitted (did you mean 'page_size'?)" in err
    assert "--debug" in err


def test_debug_shows_the_traceback(misspelt: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    code = run_main(monkeypatch, "--debug", "runs")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "did you mean 'item_id_field'?" in err


def test_an_unknown_field_without_a_close_one_lists_the_fields(tmp_path: Path) -> None:
    from microprocess.declarations import JobDeclarationError
    from microprocess.declarations.loading import load_declarations

    path = tmp_path / "m.toml"
    path.write_text(MISSPELT.replace("item_id_feild", "zzz").replace("page_sise", "page_size"))
    with pytest.raises(JobDeclarationError, match=r"field 'zzz': .* \(the fields are .*item_id_field"):
        load_declarations(path)


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        errors.run_cli(broken)


# ----------------------------------------------------------------------------- items without their id


def test_items_without_their_id_are_failed_tasks_with_the_reason(stack: Stack) -> None:
    # GIVEN a run of 5 items of which 3 lack the job's item_id_field (company_id)
    items = [{"company_id": "C0000000"}, {"name": "no id"}, "a string", {"company_id": None}, {"company_id": "C1"}]
    result = stack.split({"job": "credit-scores", "run_id": "r1", "items": items})
    stack.drive(stack.forwarder().handle, stack.task_queue)
    # THEN the 5 are counted: 2 pushed and SUCCEEDED, 3 FAILED without a push, each with its reason
    assert result["expected"] == 5
    progress = stack.ledger.progress("r1")
    assert (progress.succeeded, progress.failed) == (2, 3)
    assert sorted(c["payload"]["item"]["company_id"] for c in stack.service.task_calls()) == ["C0000000", "C1"]
    run = stack.ledger.require_run("r1")
    tasks = RunTasks(stack.ledger)
    for task_id, _item in (("0-000000001", {"name": "no id"}), ("0-000000003", {"company_id": None})):
        detail = tasks.task(run, task_id)
        assert detail is not None and str(detail.state) == "FAILED"
        assert "has no 'company_id' (the job's item_id_field" in str(detail.error)
    string = tasks.task(run, "0-000000002")
    assert string is not None and "is a str, not an object with the job's item_id_field 'company_id'" in str(
        string.error
    )


# ----------------------------------------------------------------------------- progress outside a terminal


class SteppedLedger:
    """A run that advances 100 tasks per poll, then ends."""

    def __init__(self, steps: int) -> None:
        self.polls, self.steps = 0, steps

    def progress(self, run_id: str) -> Progress:
        self.polls += 1
        done = min(self.polls * 100, self.steps * 100)
        status = RunStatus.SUCCEEDED if self.polls >= self.steps else RunStatus.RUNNING
        return Progress(run_id, "j", status, self.steps * 100, done, 0, True, "t", None, None, None)


def test_progress_outside_a_terminal_is_one_plain_line_per_interval() -> None:
    # GIVEN a console that is not a terminal (a CI log) and a run that takes 20 polls of 0.5 s
    buf = io.StringIO()
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    watch_run(
        SteppedLedger(20),  # type: ignore[arg-type]
        "r1",
        console=Console(file=buf, width=80),
        clock=lambda: now[0],
        sleep=sleep,
        plain_interval_s=2.0,
    )
    lines = buf.getvalue().splitlines()
    # THEN one line per 2 s (10 s: 5 lines) and the last, each plain and whole (no redraws, no colour)
    assert len(lines) == 6, lines
    assert all(line.startswith("r1 ") and "\r" not in line and "\x1b" not in line for line in lines)
    assert lines[0].startswith("r1 RUNNING 100/2,000 (5%)")
    assert lines[-1].startswith("r1 SUCCEEDED 2,000/2,000 (100%)")


# ----------------------------------------------------------------------------- make setup


def prerequisites(makefile: str, target: str) -> list[str]:
    import re

    match = re.search(rf"^{target}:(.*)$", makefile, flags=re.M)
    assert match, f"no rule for {target}"
    return match.group(1).split()


def test_make_setup_installs_what_a_user_needs_and_make_test_builds_checkov() -> None:
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    setup = prerequisites(makefile, "setup")
    assert "$(BIN)/.installed" in setup and "node_modules/.installed" in setup
    assert not [p for p in setup if "CHECKOV" in p or "checkov" in p], setup
    assert "checkov" in prerequisites(makefile, "test")
    assert prerequisites(makefile, "checkov") == ["$(CHECKOV_VENV)/.installed"]
