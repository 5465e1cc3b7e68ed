"""The queue role (scores-queue): the signed credit-score task, signatures, idempotency."""

# ruff: noqa: F811  (pytest fixtures are imported, then named as test parameters)

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from microprocess.service.signing import (
    IDEMPOTENCY_HEADER,
    MAX_BODY_BYTES,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign_request,
)
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
FINALIZE = CREDIT_SCORES.reduce_finalize_path or "/no-finalize-declared"


def stored(env: Env, company_id: str) -> dict[str, Any]:
    item = env.ddb.get_item(TableName="companies", Key={"company_id": {"S": company_id}}).get("Item", {})
    return {k: next(iter(v.values())) for k, v in item.items()}


def test_healthz_names_the_queue_role(queue_client: TestClient) -> None:
    resp = queue_client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "role": "queue", "service": "scores-queue"}


def test_company_routes_do_not_exist_in_the_queue_role(queue_client: TestClient, env: Env) -> None:
    assert queue_client.get("/companies/C0000001").status_code == 404
    assert queue_client.get("/companies/C0000001/score").status_code == 404
    with client_for(queue_settings(service_docs=True), env) as documented:
        paths = set(documented.get("/openapi.json").json()["paths"])
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


def _bad_signature_cases(path: str, body: bytes, key: str) -> dict[str, dict[str, str]]:
    now = int(time.time())
    good = sign_request(SECRET, "POST", path, body, key, timestamp=now)
    return {
        "missing": {},
        "missing signature": {TIMESTAMP_HEADER: str(now), IDEMPOTENCY_HEADER: key},
        "wrong secret": sign_request("another-secret", "POST", path, body, key, timestamp=now),
        # well outside the 300 s window (whole seconds, and the loop takes time: 301 would be flaky)
        "stale": sign_request(SECRET, "POST", path, body, key, timestamp=now - 400),
        "from the future": sign_request(SECRET, "POST", path, body, key, timestamp=now + 120),
        "other body": sign_request(SECRET, "POST", path, body + b" ", key, timestamp=now),
        "signed for another path": sign_request(SECRET, "POST", path + "-other", body, key, timestamp=now),
        "signed for another method": sign_request(SECRET, "PUT", path, body, key, timestamp=now),
        "signed under another key": {
            **sign_request(SECRET, "POST", path, body, "run-z:other", timestamp=now),
            IDEMPOTENCY_HEADER: key,
        },
        "v1 signature": {**good, SIGNATURE_HEADER: good[SIGNATURE_HEADER].replace("v2=", "v1=")},
        "timestamp not a number": {**good, TIMESTAMP_HEADER: "yesterday"},
        "absurd timestamp": {**good, TIMESTAMP_HEADER: "9" * 400},
        "short nonce": {**good, NONCE_HEADER: "abc"},
    }


@pytest.mark.parametrize("path", [TASK, CREDIT_SCORES.reduce_part_path, CREDIT_SCORES.reduce_finalize_path])
def test_bad_missing_or_stale_signature_is_401_and_nothing_happens(
    queue_client: TestClient, env: Env, path: str
) -> None:
    # GIVEN a well-formed body for the route
    payload = task_payload("C0000009") if path == TASK else reduce_payload("run-z", 0)
    body = json.dumps(payload).encode()
    key = f"{payload['run_id']}:{payload['task_id']}"
    for case, headers in _bad_signature_cases(path, body, key).items():
        # WHEN it arrives with a bad, missing, stale, future-dated or misplaced signature
        resp = _raw_post(queue_client, path, body, headers)
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
    resp = signed_post(queue_client, TASK, payload, timestamp=int(time.time()) - 290)
    assert resp.status_code == 200
    # and a little clock skew ahead is tolerated too
    again = signed_post(queue_client, TASK, payload, timestamp=int(time.time()) + 10)
    assert again.status_code == 200


def test_exact_replay_is_refused_and_changes_nothing(queue_client: TestClient, env: Env) -> None:
    # GIVEN a signed task that was accepted
    payload = task_payload("C0000014", run_id="run-r")
    body = json.dumps(payload).encode()
    headers = sign_request(SECRET, "POST", TASK, body, "run-r:t-C0000014")
    assert _raw_post(queue_client, TASK, body, headers).status_code == 200
    record = stored(env, "C0000014")
    # WHEN the very same bytes and headers are sent again within the window
    resp = _raw_post(queue_client, TASK, body, headers)
    # THEN 401 (replay), and the record is unchanged
    assert resp.status_code == 401
    assert "replay" in resp.json()["message"]
    assert stored(env, "C0000014") == record


def test_signed_body_sent_to_another_route_is_refused(queue_client: TestClient, env: Env) -> None:
    # GIVEN a task signed for the task route
    payload = task_payload("C0000015")
    body = json.dumps(payload).encode()
    headers = sign_request(SECRET, "POST", TASK, body, "run-1:t-C0000015")
    # WHEN it is sent to the finalize route
    resp = _raw_post(queue_client, FINALIZE, body, headers)
    # THEN 401, and nothing is written
    assert resp.status_code == 401
    assert env.s3.list_objects_v2(Bucket="reports").get("KeyCount", 0) == 0


def test_kind_must_match_the_route(queue_client: TestClient, env: Env) -> None:
    # GIVEN a validly signed body of kind finalize, sent to the task route
    resp = signed_post(queue_client, TASK, {**task_payload("C0000016"), "kind": "finalize"})
    # THEN a permanent 400 naming both kinds; and a reduce-part body to finalize likewise
    assert resp.status_code == 400
    assert resp.json()["error"] == "wrong_kind"
    part = signed_post(queue_client, FINALIZE, reduce_payload("run-k", 0))
    assert part.status_code == 400 and part.json()["error"] == "wrong_kind"
    assert "score" not in stored(env, "C0000016")


def test_huge_integer_in_a_signed_scoring_field_is_a_400(queue_client: TestClient, env: Env) -> None:
    # GIVEN a signed task whose company has a 400-digit number of employees
    item = {**make_company(17, seed=SEED), "employees": int("9" * 400)}
    body = json.dumps(task_payload("C0000017", item=item)).encode()
    headers = sign_request(SECRET, "POST", TASK, body, "run-1:t-C0000017")
    # WHEN it is pushed
    resp = _raw_post(queue_client, TASK, body, headers)
    # THEN a permanent 400 naming the range, not a 500; nothing stored
    assert resp.status_code == 400
    assert resp.json()["error"] == "malformed_body"
    assert "out of range" in resp.json()["message"]
    assert "score" not in stored(env, "C0000017")


def test_non_finite_scoring_field_as_a_string_is_a_400(queue_client: TestClient) -> None:
    item = {**make_company(18, seed=SEED), "employees": "inf", "age_years": "1e400"}
    resp = signed_post(queue_client, TASK, task_payload("C0000018", item=item))
    assert resp.status_code == 400
    assert resp.json()["error"] == "unscorable_company"


def test_body_over_the_limit_is_413_before_it_is_read(queue_client: TestClient, env: Env) -> None:
    # GIVEN a 30 MiB body, validly signed
    body = b'{"run_id":"run-1","task_id":"t-C0000019","kind":"task","item":{"pad":"' + b"x" * (30 * 2**20) + b'"}}'
    headers = sign_request(SECRET, "POST", TASK, body, "run-1:t-C0000019")
    # WHEN it is pushed
    resp = _raw_post(queue_client, TASK, body, headers)
    # THEN 413 naming the limit, and nothing happened
    assert resp.status_code == 413
    assert str(MAX_BODY_BYTES) in resp.json()["message"]
    assert "score" not in stored(env, "C0000019")


def test_chunked_body_over_the_limit_is_413(queue_client: TestClient) -> None:
    # GIVEN a body streamed without Content-Length (chunked), over the limit
    def chunks() -> Any:
        for _ in range(12):
            yield b"x" * 2**20

    # WHEN it comes with well-formed signature headers (they are checked before the body is read)
    signed = sign_request(SECRET, "POST", TASK, b"{}", "r:t")
    resp = queue_client.post(TASK, content=chunks(), headers={"Content-Type": "application/json", **signed})
    # THEN 413 (counted while streaming), not 401 after reading it all
    assert resp.status_code == 413
    # AND unsigned, it is refused (401) before any of it is read
    unsigned = queue_client.post(TASK, content=chunks(), headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 401


def test_previous_secret_is_accepted_during_a_rotation(env: Env) -> None:
    # GIVEN the service's secret holds the current and the previous secret
    rotating = json.dumps({"current": "new-secret-0123456789", "previous": SECRET})
    with client_for(queue_settings(signing_secret=rotating), env) as client:
        # WHEN tasks arrive signed with either, and one with a third secret
        new = signed_post(client, TASK, task_payload("C0000020"), secret="new-secret-0123456789")
        old = signed_post(client, TASK, task_payload("C0000021"), secret=SECRET)
        other = signed_post(client, TASK, task_payload("C0000022"), secret="third-secret-0123456789")
    # THEN both are accepted, the third refused
    assert (new.status_code, old.status_code, other.status_code) == (200, 200, 401)


def test_service_rereads_a_rotated_secret_on_a_mismatch(env: Env) -> None:
    # GIVEN a service that read its secret from Secrets Manager
    arn = env.aws.secretsmanager.create_secret(Name="rotating", SecretString="first-secret-0123456789")["ARN"]
    settings = queue_settings(signing_secret="", signing_secret_arn=arn)
    with client_for(settings, env) as client:
        assert signed_post(client, TASK, task_payload("C0000023"), secret="first-secret-0123456789").status_code == 200
        # WHEN the secret rotates to {"current": second, "previous": first} and, once the
        # service's re-read interval has passed, a push signed with the new one arrives
        env.aws.secretsmanager.put_secret_value(
            SecretId=arn,
            SecretString=json.dumps({"current": "second-secret-0123456789", "previous": "first-secret-0123456789"}),
        )
        cached = client.app.state.verifier.secrets  # type: ignore[attr-defined]
        cached._read_at -= cached.min_refresh_interval_s
        cached._tried_at -= cached.min_refresh_interval_s
        resp = signed_post(client, TASK, task_payload("C0000024"), secret="second-secret-0123456789")
        # THEN it is accepted (the service re-read the secret once), and the old one still is
        assert resp.status_code == 200
        assert signed_post(client, TASK, task_payload("C0000025"), secret="first-secret-0123456789").status_code == 200


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


def test_no_header_value_reaches_a_5xx_before_authentication(queue_client: TestClient, env: Env) -> None:
    # GIVEN a well-signed task whose headers are then bent in every odd way
    body = json.dumps(task_payload("C0000026")).encode()
    good = sign_request(SECRET, "POST", TASK, body, "run-1:t-C0000026")
    odd_values = [
        "",
        " ",
        "0",
        "-1",
        "0x10",
        "1e9",
        "\uff11\uff12\uff13",
        "\u00b2",
        "9" * 400,
        "9" * 5000,
        "\t1\t",
        "null",
    ]
    for name in (TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER, IDEMPOTENCY_HEADER):
        for value in odd_values:
            # WHEN one header carries an odd value
            headers: dict[str, Any] = {**good, name: value.encode()}  # raw bytes: non-ASCII travels too
            resp = queue_client.post(TASK, content=body, headers={"Content-Type": "application/json", **headers})
            # THEN a 4xx (401: refused), never a 5xx
            assert resp.status_code == 401, (name, value, resp.status_code)
    assert "score" not in stored(env, "C0000026")
