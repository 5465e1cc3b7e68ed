"""The second example service (reminders_service): its one task endpoint, over the SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient

from microprocess.service import sign_request
from reminders_service.main import create_app
from tests.declared import INVOICE_REMINDERS

PATH = INVOICE_REMINDERS.task_path


def _post(
    client: TestClient, item: dict[str, Any], *, secret: str = "s3-0123456789abcdef", task_id: str = "I-1"
) -> Any:
    body = json.dumps({"run_id": "r", "task_id": task_id, "kind": "task", "item": item}).encode()
    return client.post(PATH, content=body, headers=sign_request(secret, "POST", PATH, body, f"r:{task_id}"))


def _invoice(days_overdue: int) -> dict[str, Any]:
    due = datetime.now(UTC).date() - timedelta(days=days_overdue)
    return {"invoice_id": "I-1", "customer": "Acme", "amount": 10.0, "due_date": due.isoformat()}


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setenv("SIGNING_SECRET", "s3-0123456789abcdef")
    with TestClient(create_app()) as c:
        yield c


def test_an_overdue_invoice_is_reminded_by_email_then_by_letter(client: TestClient) -> None:
    assert _post(client, _invoice(12)).json() == {
        "invoice_id": "I-1",
        "reminded": True,
        "channel": "email",
        "days_overdue": 12,
    }
    assert _post(client, _invoice(90), task_id="I-2").json()["channel"] == "letter"


def test_an_invoice_not_yet_due_is_a_permanent_failure(client: TestClient) -> None:
    resp = _post(client, _invoice(-3))
    assert resp.status_code == 422
    assert "not overdue" in resp.json()["message"]


def test_an_item_that_is_not_an_invoice_is_422_naming_the_field(client: TestClient) -> None:
    resp = _post(client, {"invoice_id": "I-1", "customer": "Acme", "amount": -5, "due_date": "2026-01-01"})
    assert resp.status_code == 422
    assert "item.amount" in resp.json()["message"]


def test_the_secret_comes_from_secrets_manager_lazily(monkeypatch: pytest.MonkeyPatch, aws: None) -> None:
    # GIVEN only SIGNING_SECRET_ARN
    arn = boto3.client("secretsmanager", region_name="us-east-1").create_secret(
        Name="rem", SecretString="sm-0123456789abcdef"
    )["ARN"]
    monkeypatch.delenv("SIGNING_SECRET", raising=False)
    monkeypatch.setenv("SIGNING_SECRET_ARN", arn)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # WHEN the app is built (no AWS call yet) and a task signed with that secret arrives
    with TestClient(create_app()) as client:
        ok = _post(client, _invoice(1), secret="sm-0123456789abcdef")
        bad = _post(client, _invoice(1), secret="s3-0123456789abcdef", task_id="I-2")
    # THEN it is accepted, and one signed with another secret is not
    assert (ok.status_code, bad.status_code) == (200, 401)


def test_a_runs_outcome_is_only_shown_to_a_signed_get_and_there_are_no_docs(client: TestClient) -> None:
    # GIVEN a run whose completion callback the service recorded
    done = {"run_id": "r9", "job": "invoice-reminders", "status": "SUCCEEDED", "expected": 1, "succeeded": 1}
    body = json.dumps({**done, "task_id": "completion", "kind": "completion", "failed": 0}).encode()
    headers = sign_request("s3-0123456789abcdef", "POST", "/runs/done", body, "r9:completion")
    assert client.post("/runs/done", content=body, headers=headers).status_code == 200
    path = "/runs/r9/completion"
    # WHEN it is asked for without a signature, or signed for another run, or with another secret
    unsigned = client.get(path)
    other_run = client.get(path, headers=sign_request("s3-0123456789abcdef", "GET", path, b"", "r1:completion"))
    wrong = client.get(path, headers=sign_request("not-the-secret-0123", "GET", path, b"", "r9:completion"))
    # THEN it is refused (401, 400, 401)
    assert (unsigned.status_code, other_run.status_code, wrong.status_code) == (401, 400, 401)
    # AND a GET signed like a push gets it
    signed = client.get(path, headers=sign_request("s3-0123456789abcdef", "GET", path, b"", "r9:completion"))
    assert signed.status_code == 200 and signed.json()["status"] == "SUCCEEDED"
    # AND the service publishes no API docs
    assert [client.get(p).status_code for p in ("/docs", "/redoc", "/openapi.json")] == [404, 404, 404]
