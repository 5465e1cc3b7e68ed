"""The functions' fault injection: configured by MICROPROCESS_CHAOS, inert when unset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from microprocess.chaos.faults import FaultConfig, FaultInjector, InjectedCrash, load_faults


def test_unset_means_no_faults() -> None:
    assert load_faults("") is None and load_faults("   ") is None


def test_json_or_a_file(tmp_path: Path) -> None:
    doc = {"seed": 3, "duplicate_rate": 1.0}
    assert load_faults(json.dumps(doc)).duplicate()  # type: ignore[union-attr]
    path = tmp_path / "chaos.json"
    path.write_text(json.dumps(doc))
    assert load_faults(str(path)).config.duplicate_rate == 1.0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("/nowhere/chaos.json", "neither JSON nor a file"),
        ("{not json", "not JSON"),
        ("[1]", "expected a JSON object"),
        ('{"crash_rates": {"in_the_middle": 0.5}}', "unknown crash points"),
        ('{"crash_rates": {"before_push": 2}}', "between 0 and 1"),
        ('{"duplicate_rate": -1}', "duplicate_rate"),
    ],
)
def test_bad_settings_say_what_is_wrong(setting: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_faults(setting)


def test_crashes_follow_the_rate_and_the_seed() -> None:
    always = FaultInjector(FaultConfig(crash_rates={"after_push": 1.0}))
    with pytest.raises(InjectedCrash, match="after_push"):
        always.maybe_crash("after_push")
    always.maybe_crash("before_push")  # no rate for that point: never
    some = FaultInjector(FaultConfig(seed=1, crash_rates={"after_push": 0.3}))
    crashes = 0
    for _ in range(1000):
        try:
            some.maybe_crash("after_push")
        except InjectedCrash:
            crashes += 1
    assert 200 < crashes < 400


def test_applied_then_error_makes_the_sdk_send_an_applied_write_again(aws: None) -> None:
    # GIVEN a table and a client with the "applied, then error" fault at rate 1
    import boto3

    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(
        TableName="t",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    )
    injector = FaultInjector(FaultConfig(applied_then_error=1.0))
    injector.install_ambiguous_writes(client)
    # WHEN a naive (non-idempotent) ADD is sent once, and a read is made
    client.update_item(
        TableName="t",
        Key={"pk": {"S": "a"}},
        UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    item = client.get_item(TableName="t", Key={"pk": {"S": "a"}})["Item"]
    # THEN the SDK applied it twice (the bug the ledger must not have), reads are untouched,
    # and the injector counted the fault it fired
    assert item["n"] == {"N": "2"}
    assert injector.fired == {"applied_then_error at UpdateItem": 1}


def test_applied_then_error_is_inert_at_rate_0(aws: None) -> None:
    import boto3

    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(
        TableName="t",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    )
    injector = FaultInjector(FaultConfig())
    injector.install_ambiguous_writes(client)
    client.update_item(
        TableName="t",
        Key={"pk": {"S": "a"}},
        UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    assert client.get_item(TableName="t", Key={"pk": {"S": "a"}})["Item"]["n"] == {"N": "1"} and not injector.fired
    assert load_faults('{"applied_then_error": 0.2}').config.applied_then_error == 0.2  # type: ignore[union-attr]
