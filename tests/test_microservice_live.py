"""The live role (scores-live): health, companies, live scores; no task routes."""

# ruff: noqa: F811  (pytest fixtures are imported, then named as test parameters)

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from microservice.domain import credit_score, make_company, score_factors
from tests.declared import CREDIT_SCORES
from tests.microservice_fixtures import (  # noqa: F401  (env, live_client: fixtures)
    SEED,
    Env,
    client_for,
    env,
    live_client,
    live_settings,
    reduce_payload,
    signed_post,
    task_payload,
)


def test_healthz_names_the_role(live_client: TestClient) -> None:
    # WHEN the load balancer checks the live service
    resp = live_client.get("/healthz")
    # THEN it is healthy and says which service it is
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "role": "live", "service": "scores-live"}


def test_get_company_returns_the_stored_record(live_client: TestClient) -> None:
    # GIVEN the seeded company C0000007
    # WHEN it is read
    resp = live_client.get("/companies/C0000007")
    # THEN the record is the generated company
    assert resp.status_code == 200
    assert resp.json() == make_company(7, seed=SEED)


def test_live_score_is_computed_from_the_record(live_client: TestClient, env: Env) -> None:
    # WHEN the score of C0000003 is asked for
    resp = live_client.get("/companies/C0000003/score")
    # THEN it is the domain's score, explained by its factors, and nothing is stored
    company = make_company(3, seed=SEED)
    score, band = credit_score(company)
    assert resp.status_code == 200
    assert resp.json() == {"company_id": "C0000003", "score": score, "band": band, "factors": score_factors(company)}
    stored = env.ddb.get_item(TableName="companies", Key={"company_id": {"S": "C0000003"}})["Item"]
    assert "score" not in stored


def test_unknown_company_is_404_with_an_error(live_client: TestClient) -> None:
    for path in ("/companies/C9999999", "/companies/C9999999/score"):
        # WHEN an unknown company is asked for
        resp = live_client.get(path)
        # THEN 404 with a JSON error naming it
        assert resp.status_code == 404
        body = resp.json()
        assert body["error"] == "company_not_found"
        assert "C9999999" in body["message"]


def test_task_routes_do_not_exist_in_the_live_role(live_client: TestClient, env: Env) -> None:
    # WHEN the forwarder's routes are called on the live service, even correctly signed
    for path, payload in (
        (CREDIT_SCORES.task_path, task_payload("C0000001")),
        (CREDIT_SCORES.reduce_part_path, reduce_payload("run-1", 0)),
        (CREDIT_SCORES.reduce_finalize_path, reduce_payload("run-1", 0)),
    ):
        resp = signed_post(live_client, path, payload)
        # THEN they are not found, and nothing is scored
        assert resp.status_code == 404, path
    stored = env.ddb.get_item(TableName="companies", Key={"company_id": {"S": "C0000001"}})["Item"]
    assert "score" not in stored
    assert live_client.get("/_chaos/stats").status_code == 404


def test_openapi_docs_are_served(live_client: TestClient) -> None:
    assert live_client.get("/docs").status_code == 200
    paths = live_client.get("/openapi.json").json()["paths"]
    assert set(paths) == {"/healthz", "/companies/{company_id}", "/companies/{company_id}/score"}


def test_score_work_ms_simulates_work(env: Env) -> None:
    # GIVEN SCORE_WORK_MS=80
    with client_for(live_settings(score_work_ms=80), env) as client:
        # WHEN a score is computed
        start = time.perf_counter()
        resp = client.get("/companies/C0000002/score")
        # THEN it took at least that long
        assert resp.status_code == 200
        assert time.perf_counter() - start >= 0.08


def test_run_alone_without_a_region_answers_a_json_error_that_names_the_fix(monkeypatch: Any) -> None:
    # GIVEN the live role started as the README's "run it alone" snippet does, with no AWS region
    from microservice.main import create_app

    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    with TestClient(create_app(live_settings()), raise_server_exceptions=False) as client:
        # WHEN a company is asked for
        resp = client.get("/companies/C0000001")
    # THEN the answer is a JSON 503 naming the missing setting, not a bare 500
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "aws_not_configured" and "AWS_DEFAULT_REGION" in resp.json()["message"]
