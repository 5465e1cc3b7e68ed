"""Settings from the environment, and the app built from them."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from microservice.settings import S3_MIN_PART_BYTES, ServiceRole, SettingsError, get_settings, load_settings

_VARS = (
    "SERVICE_ROLE",
    "COMPANIES_TABLE",
    "LEDGER_TABLE",
    "REPORTS_BUCKET",
    "SIGNING_SECRET",
    "SIGNING_SECRET_ARN",
    "SES_SENDER",
    "SCORE_WORK_MS",
    "MICROPROCESS_CHAOS",
    "REPORT_PART_BYTES",
    "API_KEY",
    "API_KEY_SECRET_ARN",
    "SERVICE_DOCS",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_service_role_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN no SERVICE_ROLE, then a wrong one
    with pytest.raises(SettingsError, match="SERVICE_ROLE must be set to 'live' or 'queue'"):
        load_settings()
    monkeypatch.setenv("SERVICE_ROLE", "batch")
    with pytest.raises(SettingsError, match="SERVICE_ROLE must be set to 'live' or 'queue'"):
        load_settings()


def test_queue_role_names_what_it_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_ROLE", "queue")
    with pytest.raises(SettingsError) as err:
        load_settings()
    for name in ("LEDGER_TABLE", "REPORTS_BUCKET", "SIGNING_SECRET or SIGNING_SECRET_ARN"):
        assert name in str(err.value)


def test_live_role_needs_its_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the live role with no key: it refuses to start, naming both ways to give one
    monkeypatch.setenv("SERVICE_ROLE", "live")
    with pytest.raises(SettingsError, match=r"the live role needs API_KEY .*X-Api-Key.* or API_KEY_SECRET_ARN"):
        load_settings()
    # WHEN the stack's variables are set THEN it starts, with the docs off unless asked for
    monkeypatch.setenv("API_KEY_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:key")
    settings = load_settings()
    assert settings.api_key_secret_arn.endswith(":key") and settings.service_docs is False
    monkeypatch.setenv("SERVICE_DOCS", "true")
    assert load_settings().service_docs is True
    monkeypatch.setenv("SERVICE_DOCS", "sometimes")
    with pytest.raises(SettingsError, match="SERVICE_DOCS"):
        load_settings()


def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the queue role's environment, as the CDK stack sets it
    env = {
        "SERVICE_ROLE": "queue",
        "COMPANIES_TABLE": "Companies-1",
        "LEDGER_TABLE": "Ledger-1",
        "REPORTS_BUCKET": "reports-1",
        "SIGNING_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:signing",
        "SES_SENDER": "reports@example.com",
        "SCORE_WORK_MS": "25",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # WHEN the settings are read (once: they are cached)
    settings = get_settings()
    # THEN every variable lands in its typed field
    assert settings.service_role is ServiceRole.QUEUE
    assert (settings.companies_table, settings.ledger_table, settings.reports_bucket) == (
        "Companies-1",
        "Ledger-1",
        "reports-1",
    )
    assert settings.signing_secret_arn.endswith(":signing") and settings.signing_secret == ""
    assert settings.score_work_ms == 25
    assert settings.report_part_bytes == S3_MIN_PART_BYTES
    assert get_settings() is settings


def test_part_size_below_the_s3_minimum_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVICE_ROLE", "live")
    monkeypatch.setenv("API_KEY", "k")
    monkeypatch.setenv("REPORT_PART_BYTES", str(S3_MIN_PART_BYTES - 1))
    with pytest.raises(SettingsError, match="REPORT_PART_BYTES"):
        load_settings()


def test_uvicorn_target_builds_the_app_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the live role in the environment
    monkeypatch.setenv("SERVICE_ROLE", "live")
    monkeypatch.setenv("API_KEY", "k")
    main = importlib.import_module("microservice.main")
    main.__dict__.pop("app", None)
    try:
        # WHEN uvicorn looks up `microservice.main:app`
        app = main.app
        # THEN it is the live app, built once
        assert main.app is app
        assert TestClient(app).get("/healthz").json()["role"] == "live"
    finally:
        main.__dict__.pop("app", None)
