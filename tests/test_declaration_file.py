"""The team's declaration file: one clear error per problem (file, job or service, field, fix)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from microprocess.declarations import (
    DECLARATIONS_ENV,
    JobDeclarationError,
    ReduceMode,
    find_declarations_file,
    load_declarations,
)
from tests.declared import DECLARATIONS, ROOT

GOOD = """
[services.billing]
url = "https://billing-queue.example.com"
local_app = "billing.main:app"

[jobs.reminders]
service = "billing"
schedule = "rate(1 day)"
task_path = "/tasks/remind"
source = { kind = "s3", uri = "s3://bucket/unpaid.jsonl", format = "jsonl" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "microprocess.toml"
    path.write_text(text)
    return path


def test_a_minimal_file_declares_a_job_on_the_built_in_reduce(tmp_path: Path) -> None:
    # GIVEN a team's file with one external service and one job
    decl = load_declarations(write(tmp_path, GOOD))
    # THEN the job pushes to that service and the platform reduces
    job = decl.jobs.get("reminders")
    assert decl.service_of(job).url == "https://billing-queue.example.com"
    assert job.reduce is ReduceMode.PLATFORM and job.reduce_part_path is None
    assert decl.local is not None and decl.local.demo_job == "reminders" == decl.local.chaos_job


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # a job naming an unknown service fails at load, naming the job, the field and the fix
        (('service = "billing"', 'service = "bililng"'), ["job 'reminders'", "field 'service'", "[services.bililng]"]),
        (('schedule = "rate(1 day)"', 'schedule = "daily"'), ["job 'reminders'", "field 'schedule'", "cron("]),
        (('task_path = "/tasks/remind"', 'task_path = "tasks"'), ["job 'reminders'", "field 'task_path'", "absolute"]),
        (('url = "https://billing-queue.example.com"', 'url = "ftp://x"'), ["service 'billing'", "field 'url'"]),
        (
            ('task_path = "/tasks/remind"', 'task_path = "/t"\nreduce = "service"'),
            ["job 'reminders'", "reduce_part_path and reduce_finalize_path"],
        ),
        (("[jobs.reminders]", "[jobs.reminders]\nsurprise = 1"), ["job 'reminders'", "field 'surprise'", "Extra"]),
        (("[services.billing]", "[servcies.x]\na=1\n[services.billing]"), ["unknown top-level key", "servcies"]),
        (
            (
                'source = { kind = "s3", uri = "s3://bucket/unpaid.jsonl", format = "jsonl" }',
                'source = { kind = "dynamodb", table = "customers" }',
            ),
            ["field 'source.table'", "unknown table 'customers'", "[tables.customers]"],
        ),
        (
            ('url = "https://billing-queue.example.com"\nlocal_app = "billing.main:app"', ""),
            ["service 'billing'", "endpoint"],
        ),
    ],
)
def test_a_bad_file_gives_one_error_naming_file_owner_field_and_fix(
    tmp_path: Path, edit: tuple[str, str], expected: list[str]
) -> None:
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(JobDeclarationError) as exc:
        load_declarations(path)
    text = str(exc.value)
    assert text.startswith(str(path)), text
    for part in expected:
        assert part in text, text


def test_not_toml_and_a_missing_file_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(JobDeclarationError, match=r"microprocess.toml: not valid TOML"):
        load_declarations(write(tmp_path, "[jobs.x\n"))
    with pytest.raises(JobDeclarationError, match=r"no declaration file.*MICROPROCESS_DECLARATIONS"):
        load_declarations(tmp_path / "absent.toml")


def test_the_file_is_found_by_the_variable_then_upwards_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, GOOD)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert find_declarations_file({}) == path
    other = tmp_path / "teams.toml"
    other.write_text(GOOD)
    assert find_declarations_file({DECLARATIONS_ENV: str(other)}) == other


def test_the_repository_declares_two_example_jobs_on_two_services() -> None:
    assert DECLARATIONS.jobs.names() == ["credit-scores", "invoice-reminders"]
    assert DECLARATIONS.service_of("credit-scores").bundled == "microservice"
    assert DECLARATIONS.service_of("invoice-reminders").local_app == "reminders_service.main:app"
    assert DECLARATIONS.jobs.get("credit-scores").reduce is ReduceMode.SERVICE
    assert DECLARATIONS.jobs.get("invoice-reminders").reduce is ReduceMode.PLATFORM


def test_the_core_package_names_no_job_service_or_company() -> None:
    # The acceptance check of "Your own jobs and services", as a test.
    found = subprocess.run(
        ["grep", "-rIil", r"credit\|compan", str(ROOT / "microprocess")], capture_output=True, text=True, check=False
    )
    assert found.stdout == "", f"the core names an example: {found.stdout}"


def test_the_declarations_load_in_a_fresh_interpreter_from_any_directory(tmp_path: Path) -> None:
    # The Lambda code asset holds the file beside the package: found without the variable, from elsewhere.
    code = "from microprocess.declarations import get_declarations as g; print(g().path)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(ROOT / "microprocess.toml")
