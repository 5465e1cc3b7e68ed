"""`microprocess services [SERVICE] [--json]`: each service's load, shares and shedding, against moto."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from microprocess.cli import services as services_cli
from microprocess.control.service_controller import ServiceState
from microprocess.control.share import ServiceLoad
from microprocess.declarations import JobRegistry, ServiceDeclaration, ServiceRegistry
from microprocess.pipeline.shedding import ServiceWaits
from tests import test_control_cli
from tests.declared import CREDIT_SCORES, INVOICE_REMINDERS

deployment = test_control_cli.deployment  # the fixture: moto clients behind `connect`

HEAVY = CREDIT_SCORES.model_copy(update={"weight": 2.0})
LIGHT = INVOICE_REMINDERS.model_copy(update={"service": HEAVY.service, "weight": 1.0})


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    services_cli.register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps `services` as a sub-command
    return app


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch) -> Any:
    shared = ServiceDeclaration(name=HEAVY.service, local_app="m:app", capacity={"concurrent_pushes": 48})
    alone = ServiceDeclaration(name="alone", local_app="n:app")
    decl = SimpleNamespace(jobs=JobRegistry([HEAVY, LIGHT]), services=ServiceRegistry([shared, alone]))
    monkeypatch.setattr(services_cli, "get_declarations", lambda: decl)
    return decl


def save_load(ddb: Any, table: str, at: float) -> None:
    load = ServiceLoad(
        HEAVY.service,
        48,
        {HEAVY.name: 8, LIGHT.name: 4},
        {HEAVY.name: 2 / 3, LIGHT.name: 1 / 3},
        {HEAVY.name: 30, LIGHT.name: 14},
        {HEAVY.name: 4, LIGHT.name: 4},
        at=at,
    )
    saved = load.as_dict() | {
        "caps": dict(load.caps),
        "shares": dict(load.shares),
        "in_flight": dict(load.in_flight),
        "batch_sizes": dict(load.batch_sizes),
    }
    ServiceState(ddb, table).save(HEAVY.service, {"load": saved})


def test_services_json_gives_each_services_capacity_shares_in_flight_and_age(
    app: typer.Typer,
    declared: Any,
    deployment: Any,
    ddb: Any,
    ledger_table: str,
) -> None:
    # GIVEN a service at capacity 48 shared by two jobs (weights 2:1) whose controller ticked 30 s ago
    save_load(ddb, ledger_table, time.time() - 30)

    # WHEN a script asks for every service's load
    result = CliRunner().invoke(app, ["services", "--json"])

    # THEN each declared service is listed, the shared one with its load against its capacity
    assert result.exit_code == 0, result.output
    by_name = {s["service"]: s for s in json.loads(result.output)["services"]}
    assert sorted(by_name) == ["alone", HEAVY.service]
    scores = by_name[HEAVY.service]
    assert scores["capacity"] == {"concurrent_pushes": 48, "pushes_per_second": None}
    assert scores["shared"] is True
    assert [(j["job"], j["weight"]) for j in scores["jobs"]] == [(HEAVY.name, 2.0), (LIGHT.name, 1.0)]
    assert scores["load"]["allowed_pushes"] == 48
    assert scores["load"]["jobs"][HEAVY.name] == {"cap_batches": 8, "share": 0.667, "in_flight": 30}
    assert scores["in_flight"] == 44
    assert 29 <= scores["age_s"] <= 60
    assert scores["wait_until"] is None
    # the service nobody shares: no load, said so
    assert by_name["alone"]["shared"] is False and by_name["alone"]["load"] is None


def test_services_shows_a_shedding_service_as_asked_to_wait_until_t(
    app: typer.Typer,
    declared: Any,
    deployment: Any,
    ddb: Any,
    ledger_table: str,
) -> None:
    # GIVEN the shared service answered 503 Retry-After: 120 (its wait mark in the ledger)
    save_load(ddb, ledger_table, time.time())
    until = ServiceWaits(ddb, ledger_table).ask_to_wait(HEAVY.service, 120, "HTTP 503 Retry-After: 120")

    # WHEN an operator looks at that one service, in text and JSON
    text = CliRunner().invoke(app, ["services", HEAVY.service])
    as_json = json.loads(CliRunner().invoke(app, ["services", HEAVY.service, "--json"]).output)

    # THEN both say until when it asked to wait, and why; the text names each job's share
    assert text.exit_code == 0, text.output
    assert "asked to wait until" in text.output and "Retry-After: 120" in text.output
    assert f"{HEAVY.name}" in text.output and "share 67%" in text.output and "30 in flight" in text.output
    [entry] = as_json["services"]
    assert entry["wait_until"].startswith(time.strftime("%Y-%m-%d", time.gmtime(until)))
    assert "Retry-After: 120" in entry["why"]


def test_services_refuses_an_unknown_service_naming_the_declared_ones(
    app: typer.Typer,
    declared: Any,
    deployment: Any,
) -> None:
    result = CliRunner().invoke(app, ["services", "scorez"])
    assert result.exit_code == 2
    assert "unknown service 'scorez'" in result.output and "alone" in result.output
