"""The live role (scores-live): health, companies and live scores behind the API key; no task routes;
the OpenAPI docs only when asked for."""

# ruff: noqa: F811  (pytest fixtures are imported, then named as test parameters)

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient

from microprocess.service.rotation import CachedSecret
from microservice.api_key import ApiKeys
from microservice.domain import credit_score, make_company, score_factors
from microservice.errors import ServiceError
from tests.declared import CREDIT_SCORES
from tests.microservice_fixtures import (  # noqa: F401  (env, live_client: fixtures)
    API_KEY,
    KEYED,
    REGION,
    SEED,
    Env,
    client_for,
    env,
    live_client,
    live_settings,
    queue_settings,
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


def test_openapi_docs_are_served_when_asked_for(env: Env) -> None:
    # GIVEN SERVICE_DOCS=true (the local stack sets it)
    with client_for(live_settings(service_docs=True), env) as client:
        # THEN the docs are served, without a key, and the schema says which header carries it
        assert client.get("/docs").status_code == 200
        assert client.get("/redoc").status_code == 200
        schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/healthz", "/companies/{company_id}", "/companies/{company_id}/score"}
    assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-Api-Key",
        "description": schema["components"]["securitySchemes"]["APIKeyHeader"]["description"],
    }
    assert schema["paths"]["/companies/{company_id}"]["get"]["security"] == [{"APIKeyHeader": []}]
    assert "401" in schema["paths"]["/companies/{company_id}"]["get"]["responses"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


@pytest.mark.parametrize("settings", [live_settings, queue_settings], ids=["live", "queue"])
def test_openapi_docs_are_off_unless_asked_for(env: Env, settings: Any) -> None:
    # GIVEN either role with SERVICE_DOCS unset (the cloud stage's default)
    with client_for(settings(), env, headers=KEYED) as client:
        # THEN no docs, no ReDoc, no schema: 404 even with the key
        for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            assert client.get(path).status_code == 404, path
        # and the service itself still answers
        assert client.get("/healthz").status_code == 200


# ---------------------------------------------------------------------------- the API key


def test_healthz_needs_no_key(env: Env) -> None:
    # GIVEN a client without the key (the load balancer's health check)
    with client_for(live_settings(), env) as client:
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("path", ["/companies/C0000001", "/companies/C0000001/score", "/companies/C9999999"])
def test_no_key_is_401_naming_the_header(env: Env, path: str) -> None:
    with client_for(live_settings(), env) as client:
        # WHEN a company is asked for without the header, or with it empty
        for headers in ({}, {"X-Api-Key": ""}):
            resp = client.get(path, headers=headers)
            # THEN 401, a JSON error that names the header, and no company in the answer
            assert resp.status_code == 401, resp.text
            assert resp.json()["error"] == "missing_api_key"
            assert "X-Api-Key" in resp.json()["message"]


def test_a_wrong_key_is_401_and_reads_nothing(env: Env) -> None:
    with client_for(live_settings(), env) as client:
        for wrong in (API_KEY + "x", API_KEY[:-1], API_KEY.upper(), "é-not-ascii"):
            resp = client.get("/companies/C0000001", headers={"X-Api-Key": wrong.encode()})
            assert resp.status_code == 401, wrong
            assert resp.json()["error"] == "invalid_api_key" and "X-Api-Key" in resp.json()["message"]
        # the right key, in any header case, is accepted
        assert client.get("/companies/C0000001", headers={"x-api-key": API_KEY}).status_code == 200


def test_the_key_comes_from_its_secret_by_arn(env: Env) -> None:
    # GIVEN the key in Secrets Manager, and only its ARN in the settings (as the stacks pass it)
    secrets = boto3.client("secretsmanager", region_name=REGION)
    arn = secrets.create_secret(Name="scores-live-api-key", SecretString="key-from-the-secret")["ARN"]
    with client_for(live_settings(api_key="", api_key_secret_arn=arn), env) as client:
        # THEN that key opens the API and another does not
        assert client.get("/companies/C0000001", headers={"X-Api-Key": "key-from-the-secret"}).status_code == 200
        assert client.get("/companies/C0000001", headers=KEYED).status_code == 401


def test_a_rotated_key_is_taken_up_without_a_restart() -> None:
    # GIVEN the live API's keys read from a secret whose value changes, and a clock
    value = {"secret": "old-key"}
    now = [0.0]
    reads = []

    def load() -> str:
        reads.append(value["secret"])
        return value["secret"]

    keys = ApiKeys(CachedSecret(load, min_refresh_interval_s=30, clock=lambda: now[0]))
    keys.check("old-key")
    # WHEN the secret is rotated to {"current": new, "previous": old}, and a client sends the new key
    value["secret"] = json.dumps({"current": "new-key", "previous": "old-key"})
    now[0] = 31.0
    keys.check("new-key")  # an unknown key makes the process re-read the secret
    # THEN both keys work during the rotation ...
    keys.check("old-key")
    # ... and once the previous key is dropped, the old one is refused from the hourly re-read on
    value["secret"] = "new-key"
    now[0] = 31.0 + 3601
    with pytest.raises(ServiceError) as refused:
        keys.check("old-key")
    assert refused.value.status == 401 and refused.value.code == "invalid_api_key"
    # a flood of bad keys re-reads the secret at most once per interval
    for _ in range(5):
        with pytest.raises(ServiceError):
            keys.check("guess")
    assert len(reads) == 3


def test_score_work_ms_simulates_work(env: Env) -> None:
    # GIVEN SCORE_WORK_MS=80
    with client_for(live_settings(score_work_ms=80), env, headers=KEYED) as client:
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
    with TestClient(create_app(live_settings()), raise_server_exceptions=False, headers=KEYED) as client:
        # WHEN a company is asked for
        resp = client.get("/companies/C0000001")
    # THEN the answer is a JSON 503 naming the missing setting, not a bare 500
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "aws_not_configured" and "AWS_DEFAULT_REGION" in resp.json()["message"]


def test_a_failing_key_store_answers_401_to_bad_keys_503_before_any_read_and_costs_one_read_per_interval() -> None:
    # GIVEN the live API's keys, read once, then a Secrets Manager that fails
    now = [0.0]
    store = {"fail": False, "reads": 0}

    def load() -> str:
        store["reads"] += 1
        if store["fail"]:
            raise ConnectionError("injected: Secrets Manager unreachable")
        return "the-key"

    keys = ApiKeys(CachedSecret(load, min_refresh_interval_s=30, clock=lambda: now[0]))
    keys.check("the-key")
    store["fail"] = True
    # WHEN 100 bad keys arrive within 40 s
    for i in range(100):
        now[0] = i * 0.4
        with pytest.raises(ServiceError) as refused:
            keys.check("guess")
        # THEN each is a 401 decided with the cached key, never a 5xx
        assert refused.value.status == 401
    # AND the store was tried once more, not once per bad key; the real key still works
    assert store["reads"] == 2
    keys.check("the-key")
    # AND a process that never read its key answers 503 with Retry-After (the client retries)
    fresh = ApiKeys(CachedSecret(load, min_refresh_interval_s=30, clock=lambda: now[0]))
    with pytest.raises(ServiceError) as unavailable:
        fresh.check("the-key")
    assert unavailable.value.status == 503 and unavailable.value.headers["Retry-After"] == "30"
