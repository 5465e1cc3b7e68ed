"""Which processes `local up` starts for the declared services, and `--service NAME=URL`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from microprocess.local.services import (
    ServiceConfigError,
    parse_service_urls,
    plan_processes,
    role_of,
    service_env,
    write_role_profile,
)
from tests.declared import DECLARATIONS

OUTPUTS = {
    "LedgerTable": "ledger",
    "ReportsBucket": "reports",
    "SourceTables": '{"companies": "companies-1"}',
    "ServiceSecretArns": '{"scores": "arn:scores", "reminders": "arn:reminders"}',
    "ApiKeyArns": '{"scores": "arn:scores-api-key"}',
}


def test_every_declared_service_runs_and_a_bundled_one_in_both_roles() -> None:
    procs = plan_processes(DECLARATIONS, {})
    assert [(p.key, p.process, p.role, p.pushes) for p in procs] == [
        ("scores-live", "scores-live", "live", False),
        ("scores", "scores-queue", "queue", True),
        ("reminders", "reminders", None, True),
    ]


def test_a_service_given_a_url_gets_no_process() -> None:
    urls = parse_service_urls(["reminders=http://127.0.0.1:9000/"], DECLARATIONS)
    assert urls == {"reminders": "http://127.0.0.1:9000"}
    assert {p.service for p in plan_processes(DECLARATIONS, urls)} == {"scores"}


def test_no_example_service_needs_a_url_for_every_service() -> None:
    with pytest.raises(ServiceConfigError, match=r"service 'scores' has no local endpoint.*--service scores=URL"):
        plan_processes(DECLARATIONS, {"reminders": "http://127.0.0.1:9000"}, start_examples=False)
    urls = {"scores": "http://127.0.0.1:9001", "reminders": "http://127.0.0.1:9000"}
    assert plan_processes(DECLARATIONS, urls, start_examples=False) == []


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("reminders", "must be NAME=URL"),
        ("nobody=http://x", "unknown service 'nobody'"),
        ("reminders=ftp://x", "must start with http"),
    ],
)
def test_bad_service_options_name_the_fix(pair: str, message: str) -> None:
    with pytest.raises(ServiceConfigError, match=message):
        parse_service_urls([pair], DECLARATIONS)


#: The stack-side arguments of `service_env` (the emulator over TLS, a role profile).
LOCAL: dict[str, Any] = {
    "declarations": DECLARATIONS,
    "endpoint_url": "https://127.0.0.1:1",
    "ca_bundle": "/ws/tls/ca.pem",
    "aws_profile": Path("/ws/aws/p.config"),
}


def test_a_service_process_holds_no_credentials_only_a_profile_of_its_own_role(tmp_path: Path) -> None:
    # GIVEN each planned process and the stack's ServiceRoleArns
    roles = {"scores-live": "arn:live", "scores-queue": "arn:queue", "reminders": "arn:reminders"}
    outputs = {**OUTPUTS, "ServiceRoleArns": json.dumps(roles)}
    for proc in plan_processes(DECLARATIONS, {}):
        role = role_of(proc, outputs)
        profile = write_role_profile(tmp_path / f"{proc.process}.config", role_arn=role, session_name=proc.process)
        env = service_env(proc, ses_sender="r@example.com", outputs=outputs, **{**LOCAL, "aws_profile": profile})
        # THEN its environment names the profile and trusts the local CA, and holds no key at all
        assert "AWS_ACCESS_KEY_ID" not in env and "AWS_SECRET_ACCESS_KEY" not in env and "AWS_SESSION_TOKEN" not in env
        assert env["AWS_PROFILE"] == "service" and env["AWS_CONFIG_FILE"] == str(profile)
        assert env["AWS_CA_BUNDLE"] == "/ws/tls/ca.pem" and env["MICROPROCESS_PROCESS"] == proc.process
        # AND the profile assumes exactly its role (the cloud task role of that process), readable by the owner only
        text = profile.read_text()
        assert f"role_arn = {role}" in text and f"role_session_name = {proc.process}" in text
        assert profile.stat().st_mode & 0o077 == 0
    assert {role_of(p, outputs) for p in plan_processes(DECLARATIONS, {})} == set(roles.values())
    # a stage deployed before the roles existed is refused with the fix
    with pytest.raises(ServiceConfigError, match=r"no role for the service process 'scores-live'.*local up"):
        role_of(plan_processes(DECLARATIONS, {})[0], OUTPUTS)


def test_only_the_push_endpoint_gets_the_secret_and_a_bundled_service_its_tables() -> None:
    live, queue, reminders = plan_processes(DECLARATIONS, {})
    common = {**LOCAL, "outputs": OUTPUTS}
    live_env = service_env(live, ses_sender="r@example.com", **common)
    queue_env = service_env(queue, ses_sender="r@example.com", **common)
    reminders_env = service_env(reminders, ses_sender="r@example.com", **common)
    assert "SIGNING_SECRET_ARN" not in live_env and live_env["SERVICE_ROLE"] == "live"
    assert queue_env["SIGNING_SECRET_ARN"] == "arn:scores" and queue_env["COMPANIES_TABLE"] == "companies-1"
    assert reminders_env["SIGNING_SECRET_ARN"] == "arn:reminders" and "SERVICE_ROLE" not in reminders_env
    assert reminders_env["MICROPROCESS_DECLARATIONS"] == str(DECLARATIONS.path)


def test_only_the_live_role_gets_the_api_key_and_the_example_its_docs() -> None:
    live, queue, reminders = plan_processes(DECLARATIONS, {})
    common = {**LOCAL, "ses_sender": "r@example.com"}
    live_env = service_env(live, outputs=OUTPUTS, **common)
    assert live_env["API_KEY_SECRET_ARN"] == "arn:scores-api-key"
    for other in (queue, reminders):
        assert "API_KEY_SECRET_ARN" not in service_env(other, outputs=OUTPUTS, **common)
    # the declaration's local_env turns the bundled example's docs on, in both roles
    assert live_env["SERVICE_DOCS"] == "true" == service_env(queue, outputs=OUTPUTS, **common)["SERVICE_DOCS"]
    # a stage deployed without the live role's key is refused with the fix
    without = {k: v for k, v in OUTPUTS.items() if k != "ApiKeyArns"}
    with pytest.raises(ServiceConfigError, match=r"no API key secret for service 'scores'.*microprocess local up"):
        service_env(live, outputs=without, **common)
