"""The queue role (scores-queue): the signed credit-score task, signatures, idempotency."""

# ruff: noqa: F811  (pytest fixtures are imported, then named as test parameters)

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from microprocess.service.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from microservice.aws import AwsClients
from microservice.domain import credit_score, make_company
from tests.declared import CREDIT_SCORES
from tests.microservice_fixtures import (  # noqa: F401  (env, queue_client: fixtures)
    SECRET,
    SEED,
    Env,
    client_for,
    env,
    queue_client,
    queue_settings,
    reduce_payload,
    signed_post,
    task_payload,
)

TASK = CREDIT_SCORES.task_path


def stored(env: Env, company_id: str) -> dict[str, Any]:
    item = env.ddb.get_item(TableName="companies", Key={"company_id": {"S": company_id}}).get("Item", {})
    return {k: next(iter(v.values())) for k, v in item.items()}


def test_healthz_names_the_queue_role(queue_client: TestClient) -> None:
    resp = queue_client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "role": "queue", "service": "scores-queue"}


def test_company_routes_do_not_exist_in_the_queue_role(queue_client: TestClient) -> None:
    assert queue_client.get("/companies/C0000001").status_code == 404
    assert queue_client.get("/companies/C0000001/score").status_code == 404
    paths = set(queue_client.get("/openapi.json").json()["paths"])
    assert paths == {"/healthz", TASK, CREDIT_SCORES.reduce_part_path, CREDIT_SCORES.reduce_finalize_path}


def test_task_with_only_the_id_reads_the_company_and_stores_its_score(queue_client: TestClient, env: Env) -> None:
    # GIVEN a task carrying only the company id
    payload = task_payload("C0000004", run_id="run-a")
    # WHEN the forwarder pushes it
    resp = signed_post(queue_client, TASK, payload)
    # THEN the answer is the score of the stored company, and the record now holds it
    score, band = credit_score(make_company(4, seed=SEED))
    assert resp.status_code == 200
    assert resp.json() == {"company_id": "C0000004", "score": score, "band": band}
    record = stored(env, "C0000004")
    assert (int(record["score"]), record["band"], record["scored_by_run"]) == (score, band, "run-a")
    assert record["scored_at"].endswith("Z")


def test_task_with_the_whole_company_is_scored_as_sent(queue_client: TestClient, env: Env) -> None:
    # GIVEN a task whose item carries every attribute, differing from the table (two more defaults)
    company = make_company(5, seed=SEED)
    item = {**company, "payment_defaults": company["payment_defaults"] + 2}
    # WHEN it is pushed
    resp = signed_post(queue_client, TASK, task_payload("C0000005", item=item))
    # THEN the item as sent was scored (no table read needed), and stored on the record
    assert resp.status_code == 200
    assert resp.json()["score"] == credit_score(item)[0]
    assert resp.json()["score"] != credit_score(company)[0]
    assert int(stored(env, "C0000005")["score"]) == credit_score(item)[0]


def test_unknown_company_is_404_and_creates_nothing(queue_client: TestClient, env: Env) -> None:
    for item in ({"company_id": "C7777777"}, {**make_company(1, seed=SEED), "company_id": "C7777777"}):
        # WHEN a task names a company that is not in the table (with or without its attributes)
        resp = signed_post(queue_client, TASK, task_payload("C7777777", item=item))
        # THEN 404 with an error JSON (a permanent failure for the forwarder), and no record appears
        assert resp.status_code == 404
        assert resp.json()["error"] == "company_not_found"
        assert stored(env, "C7777777") == {}


def test_item_without_company_id_is_a_permanent_400(queue_client: TestClient) -> None:
    resp = signed_post(queue_client, TASK, task_payload("x", item={"name": "no id"}))
    assert resp.status_code == 400
    assert resp.json()["error"] == "missing_company_id"


def test_signed_body_that_is_not_a_task_is_422(queue_client: TestClient) -> None:
    resp = signed_post(queue_client, TASK, {"run_id": "r", "task_id": "t", "item": "not an object"})
    assert resp.status_code == 422
    assert resp.json()["error"] == "invalid_request"
    assert "item" in resp.json()["message"]


def test_same_task_twice_gives_the_same_result_and_writes_once(queue_client: TestClient, env: Env) -> None:
    # GIVEN a task that was done once
    payload = task_payload("C0000006", run_id="run-b")
    first = signed_post(queue_client, TASK, payload)
    record = stored(env, "C0000006")
    # WHEN it is pushed again with the same Idempotency-Key (a redelivery), a little later
    time.sleep(0.01)
    second = signed_post(queue_client, TASK, payload)
    # THEN the same answer, and the record is unchanged (scored_at keeps the first time)
    assert second.status_code == first.status_code == 200
    assert second.json() == first.json()
    assert stored(env, "C0000006") == record
    # AND a later run scores it again
    signed_post(queue_client, TASK, task_payload("C0000006", run_id="run-c"))
    assert stored(env, "C0000006")["scored_by_run"] == "run-c"


def test_idempotency_key_must_name_the_task(queue_client: TestClient, env: Env) -> None:
    resp = signed_post(queue_client, TASK, task_payload("C0000008"), idempotency_key="run-x:other-task")
    assert resp.status_code == 400
    assert resp.json()["error"] == "idempotency_key_mismatch"
    assert "score" not in stored(env, "C0000008")


def _raw_post(client: TestClient, path: str, body: bytes, headers: dict[str, str]) -> Any:
    return client.post(path, content=body, headers={"Content-Type": "application/json", **headers})


def _bad_signature_cases(body: bytes) -> dict[str, dict[str, str]]:
    now = int(time.time())
    good = sign(SECRET, body, now)
    return {
        "missing": {},
        "missing signature": {TIMESTAMP_HEADER: str(now)},
        "wrong secret": sign("another-secret", body, now),
        # well outside the 300 s window (whole seconds, and the loop takes time: 301 would be flaky)
        "stale": sign(SECRET, body, now - 400),
        "from the future": sign(SECRET, body, now + 400),
        "other body": sign(SECRET, body + b" ", now),
        "not hex v1": {**good, SIGNATURE_HEADER: good[SIGNATURE_HEADER].replace("v1=", "v0=")},
        "timestamp not a number": {**good, TIMESTAMP_HEADER: "yesterday"},
    }


@pytest.mark.parametrize("path", [TASK, CREDIT_SCORES.reduce_part_path, CREDIT_SCORES.reduce_finalize_path])
def test_bad_missing_or_stale_signature_is_401_and_nothing_happens(
    queue_client: TestClient, env: Env, path: str
) -> None:
    # GIVEN a well-formed body for the route
    payload = task_payload("C0000009") if path == TASK else reduce_payload("run-z", 0)
    body = json.dumps(payload).encode()
    for case, headers in _bad_signature_cases(body).items():
        # WHEN it arrives with a bad, missing or stale signature
        resp = _raw_post(queue_client, path, body, {IDEMPOTENCY_HEADER: "run-z:x", **headers})
        # THEN 401 with an error JSON
        assert resp.status_code == 401, case
        assert resp.json()["error"] == "bad_signature", case
    # AND nothing was written: no score, no report object
    assert "score" not in stored(env, "C0000009")
    assert env.s3.list_objects_v2(Bucket="reports").get("KeyCount", 0) == 0


def test_unsigned_garbage_is_401_not_422(queue_client: TestClient) -> None:
    # The signature is checked before the body is even parsed.
    assert _raw_post(queue_client, TASK, b"{not json", {}).status_code == 401


def test_signature_at_the_edge_of_the_window_is_accepted(queue_client: TestClient) -> None:
    payload = task_payload("C0000010")
    body = json.dumps(payload).encode()
    headers = {IDEMPOTENCY_HEADER: "run-1:t-C0000010", **sign(SECRET, body, int(time.time()) - 290)}
    assert _raw_post(queue_client, TASK, body, headers).status_code == 200


def test_secret_is_read_from_secrets_manager_once(env: Env) -> None:
    # GIVEN the secret only in Secrets Manager (SIGNING_SECRET_ARN)
    arn = env.aws.secretsmanager.create_secret(Name="signing", SecretString="from-secrets-manager")["ARN"]
    calls: list[str] = []
    real = env.aws.secretsmanager.get_secret_value

    def counting(**kwargs: Any) -> Any:
        calls.append(kwargs["SecretId"])
        return real(**kwargs)

    env.aws.secretsmanager.get_secret_value = counting
    fresh = AwsClients(dynamodb=env.ddb, s3=env.s3, ses=env.ses, secretsmanager=env.aws.secretsmanager)
    env.aws = fresh
    settings = queue_settings(signing_secret="", signing_secret_arn=arn)
    with client_for(settings, env) as client:
        # WHEN tasks signed with that secret arrive, and one signed with another secret
        ok1 = signed_post(client, TASK, task_payload("C0000011"), secret="from-secrets-manager")
        ok2 = signed_post(client, TASK, task_payload("C0000012"), secret="from-secrets-manager")
        bad = signed_post(client, TASK, task_payload("C0000013"), secret=SECRET)
    # THEN the first two are accepted, the last refused, and the secret was fetched once
    assert (ok1.status_code, ok2.status_code, bad.status_code) == (200, 200, 401)
    assert calls == [arn]
