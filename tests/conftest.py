"""Shared fixtures: in-process AWS (moto) and a ledger table built from LEDGER_SCHEMA."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from microprocess.ledger import Ledger, ledger_table_definition
from microprocess.local.calls import CALL_LOG_ENV
from tests import moto_partiql

# The ledger writes a batch's task records as PartiQL INSERTs; moto does not fail a duplicate one.
moto_partiql.install()

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a real AWS account: fake credentials, fixed region."""
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def ddb(aws: None) -> Any:
    return boto3.client("dynamodb", region_name=REGION)


@pytest.fixture
def ledger_table(ddb: Any) -> str:
    ddb.create_table(**ledger_table_definition("ledger"))
    return "ledger"


@pytest.fixture
def ledger(ddb: Any, ledger_table: str) -> Ledger:
    return Ledger(ledger_table, client=ddb, rng=random.Random(7))


os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")


@pytest.hookimpl(trylast=True)  # after `-m` deselected what does not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """An e2e session records every AWS call of its stacks' functions and services (the stacks inherit
    `MICROPROCESS_AWS_CALL_LOG`), and checks the record last (`tests/test_local_e2e_calls.py`)."""
    items.sort(key=lambda item: item.get_closest_marker("aws_calls") is not None)
    if any(item.get_closest_marker("e2e") for item in items):
        os.environ.setdefault(CALL_LOG_ENV, tempfile.mkdtemp(prefix="microprocess-aws-calls-"))


# Fixtures of the Lambda function tests (moto resources + an HTTP stand-in for the service).
pytest_plugins = ["tests.functions_harness"]
