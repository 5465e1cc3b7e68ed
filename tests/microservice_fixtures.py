"""Fixtures of the microservice tests: moto-backed tables, bucket and SES, apps of both roles,
signed requests, and runs whose results are recorded through the real `Ledger` API.

Imported by the `test_microservice_*` modules (tests/conftest.py belongs to the core).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient

from microprocess.declarations import JobDeclaration
from microprocess.ledger import CURSOR_DONE, Ledger, RunStatus, TaskOutcome, TaskState
from microprocess.pipeline.envelope import shard_of
from microprocess.service.signing import sign_request
from microservice.aws import AwsClients, get_aws
from microservice.domain import companies_table_definition, credit_score, generate_companies, seed_companies
from microservice.main import create_app
from microservice.settings import Settings
from tests.declared import CREDIT_SCORES

REGION = "us-east-1"
SECRET = "test-signing-secret"
#: The live API's key in the tests (`API_KEY`), and the header that carries it.
API_KEY = "test-live-api-key"
KEYED = {"X-Api-Key": API_KEY}
COMPANIES = "companies"
BUCKET = "reports"
SENDER = "reports@example.com"
SEED = 7


@dataclass
class Env:
    """The AWS side of a test: moto clients and the names the service is configured with."""

    aws: AwsClients
    ddb: Any
    s3: Any
    ses: Any
    ledger: Ledger


@pytest.fixture
def env(ddb: Any, ledger_table: str, ledger: Ledger) -> Env:
    """Companies table (60 companies), ledger table, reports bucket and a verified SES sender, in moto."""
    ddb.create_table(**companies_table_definition(COMPANIES))
    seed_companies(ddb, COMPANIES, 60, seed=SEED)
    ses = boto3.client("ses", region_name=REGION)
    ses.verify_email_identity(EmailAddress=SENDER)
    secrets = boto3.client("secretsmanager", region_name=REGION)
    # The S3 client is the service's own (made lazily, with its configuration): the presigned links are real.
    aws = AwsClients(dynamodb=ddb, ses=ses, secretsmanager=secrets)
    aws.s3.create_bucket(Bucket=BUCKET)
    return Env(aws, ddb, aws.s3, ses, ledger)


def queue_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "service_role": "queue",
        "companies_table": COMPANIES,
        "ledger_table": "ledger",
        "reports_bucket": BUCKET,
        "signing_secret": SECRET,
        "ses_sender": SENDER,
        **overrides,
    }
    return Settings(**values)


def live_settings(**overrides: Any) -> Settings:
    return Settings(**{"service_role": "live", "companies_table": COMPANIES, "api_key": API_KEY, **overrides})


def client_for(settings: Settings, env: Env, *, headers: dict[str, str] | None = None) -> TestClient:
    """A client of the app built from `settings` on `env`'s clients, sending `headers` on every request."""
    app = create_app(settings)
    app.dependency_overrides[get_aws] = lambda: env.aws
    return TestClient(app, headers=headers)


@pytest.fixture
def queue_client(env: Env) -> Iterator[TestClient]:
    with client_for(queue_settings(), env) as client:
        yield client


@pytest.fixture
def live_client(env: Env) -> Iterator[TestClient]:
    """The live role, sending the key on every request (`KEYED`)."""
    with client_for(live_settings(), env, headers=KEYED) as client:
        yield client


def signed_post(
    client: TestClient,
    path: str,
    payload: dict[str, Any],
    *,
    secret: str = SECRET,
    timestamp: int | None = None,
    idempotency_key: str | None = None,
) -> Any:
    """POST `payload` signed like the forwarder signs it (`microprocess.service.signing.sign_request`)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    key = idempotency_key if idempotency_key is not None else f"{payload.get('run_id')}:{payload.get('task_id')}"
    headers = {"Content-Type": "application/json", **sign_request(secret, "POST", path, body, key, timestamp=timestamp)}
    return client.post(path, content=body, headers=headers)


def task_payload(company_id: str, *, run_id: str = "run-1", item: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "task_id": f"t-{company_id}",
        "attempt": 1,
        "item": item if item is not None else {"company_id": company_id},
        "kind": "task",
    }


def reduce_payload(run_id: str, shard: int, *, job: str = CREDIT_SCORES.name) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "task_id": f"reduce-part-{shard:03d}",
        "attempt": 1,
        "job": job,
        "shard": shard,
        "item": None,
        "kind": "reduce-part",
    }


def finalize_payload(run_id: str, *, job: str = CREDIT_SCORES.name) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "task_id": "finalize",
        "attempt": 1,
        "job": job,
        "shard": 0,
        "item": None,
        "kind": "finalize",
    }


def failure_error(number: int) -> str:
    return f'HTTP 500: {{"error":"boom","message":"company {number} broke, line1\nline2"}}'


def record_run(
    ledger: Ledger,
    run_id: str,
    *,
    total: int,
    failed_every: int = 0,
    job: JobDeclaration = CREDIT_SCORES,
    batch: int = 10,
) -> dict[str, TaskOutcome]:
    """Create a run of `total` tasks and record every outcome through the real ledger API.

    Every `failed_every`-th task fails (0: none fail). Returns the outcomes by task id;
    the run ends REDUCING (asserted).
    """
    ledger.create_run(run_id, job)
    assert ledger.account_page(run_id, segment="0", cursor_from="", cursor_to=CURSOR_DONE, count=total)
    ledger.finish_split(run_id)
    outcomes: dict[str, TaskOutcome] = {}
    for number, company in enumerate(generate_companies(total, seed=SEED), start=1):
        task_id = f"task-{company['company_id']}"
        shard = shard_of(task_id, job.shard_count)
        if failed_every and number % failed_every == 0:
            outcome = TaskOutcome(
                task_id=task_id,
                shard=shard,
                state=TaskState.FAILED,
                attempts=job.max_attempts,
                item_id=company["company_id"],
                error=failure_error(number),
                item=company,
            )
        else:
            score, band = credit_score(company)
            outcome = TaskOutcome(
                task_id=task_id,
                shard=shard,
                state=TaskState.SUCCEEDED,
                attempts=1 + number % 2,
                item_id=company["company_id"],
                result={"company_id": company["company_id"], "score": score, "band": band},
            )
        outcomes[task_id] = outcome
    pending = list(outcomes.values())
    for start in range(0, len(pending), batch):
        ledger.record_outcomes(run_id, job.counter_count, pending[start : start + batch])
    assert ledger.require_run(run_id).status is RunStatus.REDUCING
    return outcomes
