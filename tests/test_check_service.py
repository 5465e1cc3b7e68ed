"""`microprocess check-service`: passes against both example services, fails on wrong ones naming the clause.

Each service runs for real: uvicorn on 127.0.0.1 (a free port) in a thread of the test process.
"""

# ruff: noqa: F811  (pytest fixtures are imported, then named as test parameters)

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from microprocess.cli import check_service as cs
from microservice.aws import get_aws
from microservice.domain import make_company
from microservice.main import create_app as create_scores_app
from reminders_service.main import create_app as create_reminders_app
from tests.bad_services import accepts_unsigned, crashes_on_malformed, loose_checks
from tests.declared import CREDIT_SCORES, INVOICE_REMINDERS
from tests.microservice_fixtures import SECRET, SEED, Env, env, queue_settings  # noqa: F401

INVOICE = {"invoice_id": "I-1001", "customer": "Acme Ltd", "amount": 120.5, "due_date": "2026-01-15"}


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on 127.0.0.1 in a thread; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def reminders_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("SIGNING_SECRET", SECRET)
    with serving(create_reminders_app()) as url:
        yield url


def failing(results: list[cs.ClauseResult]) -> list[str]:
    return [r.clause for r in results if not r.passed]


def test_reminders_service_passes_every_clause(reminders_url: str) -> None:
    # GIVEN the second example service, running
    # WHEN the contract is checked against it
    results = cs.check_service(reminders_url, secret=SECRET, item=INVOICE, task_path=INVOICE_REMINDERS.task_path)
    # THEN every clause passes, one result per clause in order
    assert [r.clause for r in results] == list(cs.CLAUSES)
    assert failing(results) == [], "\n".join(r.line() for r in results)
    assert '"reminded":true' in results[0].evidence
    # AND the exact replay was refused (the SDK's replay guard), not merely harmless
    replay = next(r for r in results if r.clause == cs.EXACT_REPLAY)
    assert replay.evidence.startswith("refused: HTTP 401")


def test_bundled_service_passes_every_clause(env: Env) -> None:
    # GIVEN the bundled credit-score service (queue role) over moto, running
    app = create_scores_app(queue_settings())
    app.dependency_overrides[get_aws] = lambda: env.aws
    with serving(app) as url:
        # WHEN the contract is checked with a whole company as the sample item
        results = cs.check_service(
            url, secret=SECRET, item=make_company(3, seed=SEED), task_path=CREDIT_SCORES.task_path
        )
    # THEN every clause passes
    assert failing(results) == [], "\n".join(r.line() for r in results)


def test_a_service_that_ignores_signatures_fails_and_names_the_clauses() -> None:
    # GIVEN a service that accepts unsigned requests
    with serving(accepts_unsigned.create_app()) as url:
        results = cs.check_service(url, secret=SECRET, item=INVOICE, task_path="/tasks/remind")
    # THEN every signature clause fails, and only those
    assert failing(results) == [
        cs.UNSIGNED,
        cs.WRONG_SECRET,
        cs.STALE,
        cs.FUTURE,
        cs.ABSURD_TIMESTAMP,
        cs.STALE_EDGE,
        cs.FUTURE_EDGE,
        cs.TAMPERED,
        cs.OTHER_PATH,
        cs.V1_SIGNATURE,
        cs.KEY_MISMATCH,
        cs.SWAPPED_NONCE,
    ]
    unsigned = next(r for r in results if r.clause == cs.UNSIGNED)
    assert unsigned.evidence.startswith("HTTP 200")


def test_a_service_that_answers_500_to_a_malformed_body_fails_that_clause() -> None:
    # GIVEN a service that checks signatures but crashes on a body that is not JSON
    with serving(crashes_on_malformed.create_app(SECRET)) as url:
        results = cs.check_service(url, secret=SECRET, item=INVOICE, task_path="/tasks/remind")
    # THEN the malformed-body clause fails, with the 500 as evidence (and it never compares the
    # Idempotency-Key with the body either)
    assert failing(results) == [cs.KEY_MISMATCH, cs.MALFORMED]
    malformed = next(r for r in results if r.clause == cs.MALFORMED)
    assert malformed.evidence.startswith("HTTP 500")


def test_a_wrong_secret_makes_the_valid_task_clause_fail(reminders_url: str) -> None:
    # GIVEN the checker holding a secret the service does not know
    results = cs.check_service(reminders_url, secret="not-the-secret", item=INVOICE, task_path="/tasks/remind")
    # THEN the valid task is refused, and the check says so
    assert cs.SIGNED_TASK in failing(results)
    assert "401" in results[0].evidence


def test_retry_after_must_be_well_formed() -> None:
    assert cs.well_formed_retry_after("120")
    assert cs.well_formed_retry_after("Wed, 21 Oct 2026 07:28:00 GMT")
    assert not cs.well_formed_retry_after("soon")
    assert not cs.well_formed_retry_after("-5")


def _cli() -> typer.Typer:
    app = typer.Typer()
    cs.register(app)

    @app.command("noop")
    def noop() -> None:  # a second command keeps Typer from collapsing to a single-command app
        pass

    return app


def test_cli_prints_one_line_per_clause_and_exits_zero(reminders_url: str) -> None:
    result = CliRunner().invoke(
        _cli(),
        [
            "check-service",
            "reminders",
            "--url",
            reminders_url,
            "--secret",
            SECRET,
            "--item",
            '{"invoice_id": "I-1", "customer": "A", "amount": 1, "due_date": "2026-01-01"}',
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line[:6] for line in lines[: len(cs.CLAUSES)]] == ["PASS  "] * len(cs.CLAUSES)
    assert lines[-1] == f"{len(cs.CLAUSES)} of {len(cs.CLAUSES)} clauses pass"


def test_cli_exits_non_zero_naming_the_failing_clause() -> None:
    with serving(accepts_unsigned.create_app()) as url:
        result = CliRunner().invoke(
            _cli(), ["check-service", "reminders", "--url", url, "--secret", SECRET, "--item", '{"invoice_id": "I-1"}']
        )
    assert result.exit_code == 1
    assert f"FAIL  {cs.UNSIGNED}: HTTP 200" in result.output


def test_cli_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN no local stack (its URL and secret are not to be had)
    monkeypatch.setenv("MICROPROCESS_WORKDIR", str(tmp_path / "no-stack"))
    result = CliRunner().invoke(_cli(), ["check-service", "reminders"], env={"MICROPROCESS_SERVICE_SECRET": ""})
    # THEN every missing option is named (the item comes from the job's declared sample_item)
    assert result.exit_code == 2
    assert "--url" in result.output and "--secret" in result.output and "--item" not in result.output


@pytest.mark.parametrize(
    ("flaw", "clauses"),
    [
        ("wide_windows", [cs.STALE_EDGE, cs.FUTURE_EDGE]),
        ("accepts_v1", [cs.V1_SIGNATURE]),
        ("no_key_check", [cs.KEY_MISMATCH]),
        ("cached_signatures", [cs.SWAPPED_NONCE]),
        ("no_replay_guard", []),
    ],
)
def test_a_service_with_a_loose_check_fails_exactly_that_clause(flaw: str, clauses: list[str]) -> None:
    # GIVEN a service that checks signatures, but loosely in one way (tests/bad_services/loose_checks.py)
    with serving(loose_checks.create_app(SECRET, flaw)) as url:
        # WHEN the contract is checked against it
        results = cs.check_service(url, secret=SECRET, item=INVOICE, task_path="/tasks/remind")
    # THEN exactly the clauses it breaks fail, each with the service's 2xx as evidence
    assert failing(results) == clauses, "\n".join(r.line() for r in results)
    for result in results:
        if result.clause in clauses:
            assert result.evidence.startswith("HTTP 200"), result.line()


def test_replays_accepted_are_a_warning_printed_and_not_a_failure() -> None:
    # GIVEN a service that keeps no replay record (every other clause kept)
    with serving(loose_checks.create_app(SECRET, "no_replay_guard")) as url:
        results = cs.check_service(url, secret=SECRET, item=INVOICE, task_path="/tasks/remind")
        cli = CliRunner().invoke(
            _cli(), ["check-service", "reminders", "--url", url, "--secret", SECRET, "--item", '{"invoice_id": "I-1"}']
        )
    # THEN the replay clause passes with a warning naming it, and the command exits 0 saying so
    replay = next(r for r in results if r.clause == cs.EXACT_REPLAY)
    assert replay.passed and replay.warning and "replays accepted" in replay.evidence
    assert cli.exit_code == 0, cli.output
    assert f"WARN  {cs.EXACT_REPLAY}: replays accepted" in cli.output
    assert cli.output.splitlines()[-1] == f"{len(cs.CLAUSES)} of {len(cs.CLAUSES)} clauses pass (1 with a warning)"
