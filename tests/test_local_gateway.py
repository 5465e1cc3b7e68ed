"""The emulator's authorisation, corrected where it differs from AWS (`microprocess.local.gateway`)."""

from __future__ import annotations

import base64
import json

from microprocess.local import gateway
from microprocess.local.fair_queue import FairReceive


def test_sqs_batches_are_authorised_by_their_single_message_action() -> None:
    extract = gateway.iam_action(lambda *a, **k: a[0])
    assert extract("sqs:SendMessageBatch") == "sqs:SendMessage"
    assert extract("sqs:DeleteMessageBatch") == "sqs:DeleteMessage"
    assert extract("sqs:ChangeMessageVisibilityBatch") == "sqs:ChangeMessageVisibility"
    assert extract("sqs:ReceiveMessage") == "sqs:ReceiveMessage" and extract(None) is None


def test_partiql_is_authorised_per_statement_on_its_table() -> None:
    body = json.dumps(
        {
            "Statements": [
                {"Statement": "INSERT INTO \"ledger\" VALUE {'pk': ?}"},
                {"Statement": 'SELECT * FROM "other"."by-job" WHERE pk = ?'},
                {"Statement": 'UPDATE "ledger" SET a = 1 WHERE pk = ?'},
                {"Statement": "DELETE FROM ledger WHERE pk = ?"},
            ]
        }
    ).encode()
    arn = "arn:aws:dynamodb:us-east-1:000000000000:table/"
    assert gateway.partiql_checks(body, "us-east-1", "000000000000") == [
        ("dynamodb:PartiQLInsert", arn + "ledger"),
        ("dynamodb:PartiQLSelect", arn + "other"),
        ("dynamodb:PartiQLUpdate", arn + "ledger"),
        ("dynamodb:PartiQLDelete", arn + "ledger"),
    ]
    # a statement it cannot read needs every PartiQL action on every table: refused unless all are allowed
    unknown = gateway.partiql_checks(json.dumps({"Statement": "EXPLAIN x"}).encode(), "us-east-1", "000000000000")
    assert {a for a, _ in unknown} == set(gateway.PARTIQL_VERB_ACTIONS.values())
    # the transaction hook hands other actions to ministack's own
    checks = gateway.transaction_checks(lambda *a: ["original"])
    assert checks("dynamodb:TransactWriteItems", b"{}", "r", "a") == ["original"]
    assert checks("dynamodb:BatchExecuteStatement", body, "us-east-1", "000000000000")[0][0] == "dynamodb:PartiQLInsert"


def test_ses_sends_are_authorised_on_the_sending_identity() -> None:
    identity = "arn:aws:ses:us-east-1:000000000000:identity/reports@example.com"
    assert (
        gateway.ses_send_resource(
            {"Action": ["SendEmail"], "Source": ["Reports <reports@example.com>"]}, "us-east-1", "000000000000"
        )
        == identity
    )
    assert (
        gateway.ses_send_resource({"Action": "SendEmail", "Source": "x@y.z", "SourceArn": "arn:s"}, "r", "a") == "arn:s"
    )
    raw = base64.b64encode(b"From: reports@example.com\r\nTo: a@b.c\r\n\r\nhi").decode()
    assert (
        gateway.ses_send_resource({"Action": "SendRawEmail", "RawMessage.Data": raw}, "us-east-1", "000000000000")
        == identity
    )
    assert gateway.ses_send_resource({"Action": "VerifyEmailIdentity"}, "r", "a") is None


def test_ref_of_a_secret_is_its_arn_and_other_refs_are_left_alone() -> None:
    resolve = gateway.resolve_refs(lambda value, resources, *rest: "original")
    resources = {
        "S": {"ResourceType": "AWS::SecretsManager::Secret", "Attributes": {"Arn": "arn:aws:secretsmanager:s-AbCdEf"}},
        "Q": {"ResourceType": "AWS::SQS::Queue", "Attributes": {"Arn": "arn:q"}},
    }
    assert resolve({"Ref": "S"}, resources) == "arn:aws:secretsmanager:s-AbCdEf"
    assert resolve({"Ref": "Q"}, resources) == "original"


def test_the_hooks_it_replaces_are_still_in_the_pinned_ministack() -> None:
    # GIVEN the pinned emulator WHEN the corrections are installed THEN each replaced a function that exists,
    # so an upgrade that moves one fails here instead of silently enforcing other rules
    from ministack import app
    from ministack.core import iam_actions
    from ministack.services import sqs as ministack_sqs
    from ministack.services.cloudformation import engine

    fifo_receive = ministack_sqs._collect_msgs
    # the fair receive's helpers, and the two receives that call `_collect_msgs` by its module name
    assert callable(ministack_sqs._ensure_msg_fields) and callable(ministack_sqs.new_uuid)
    for caller in (ministack_sqs._receive_messages_for_esm, ministack_sqs._act_receive_message):
        assert "_collect_msgs" in caller.__code__.co_names
    originals = (
        iam_actions.extract_iam_action,
        iam_actions.dynamodb_transaction_checks,
        iam_actions.extract_resource_arn,
        engine._resolve_refs,
        app._port_is_bindable,
        iam_actions.dynamodb_service_context,
    )
    try:
        gateway.install()
        assert iam_actions.extract_iam_action is not originals[0]
        assert iam_actions.dynamodb_transaction_checks is not originals[1]
        assert iam_actions.extract_resource_arn is not originals[2]
        assert engine._resolve_refs is not originals[3]
        assert iam_actions.dynamodb_service_context is not originals[5]
        assert (
            isinstance(ministack_sqs._collect_msgs, FairReceive)
            and ministack_sqs._collect_msgs.original is fifo_receive
        )
        # the emulator's table store still records each table's partition key where the gateway reads it
        from ministack.services import dynamodb

        assert hasattr(dynamodb, "_tables") and gateway.emulator_hash_key("no-such-table", None) is None
        assert app._port_is_bindable(app.os.environ.get("BIND_HOST", "127.0.0.1"), 443) is False
        # ministack still names SQS batches and PartiQL as the actions this corrects
        sqs = iam_actions.extract_iam_action.__closure__  # the wrapper keeps ministack's function
        assert sqs is not None
    finally:
        (
            iam_actions.extract_iam_action,
            iam_actions.dynamodb_transaction_checks,
            iam_actions.extract_resource_arn,
            engine._resolve_refs,
            app._port_is_bindable,
            iam_actions.dynamodb_service_context,
        ) = originals
        ministack_sqs._collect_msgs = fifo_receive
