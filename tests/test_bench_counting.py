"""The bench's request classification and AWS billing rules (bench.counting), and the price table."""

from __future__ import annotations

import json

import pytest

from bench.counting import (
    Request,
    item_size,
    measure,
    number_size,
    s3_operation,
    s3_price_class,
    sqs_billed_requests,
    write_units,
)
from microprocess.cli.pricing import PRICE_TABLE_PATH, Usage, cost_by_service, load_price_table
from microprocess.local import gateway

SCHEMAS = {"ledger": ("pk", "sk")}


def _auth(service: str) -> dict[str, str]:
    return {"authorization": f"AWS4-HMAC-SHA256 Credential=test/20261101/us-east-1/{service}/aws4_request, x"}


def ddb(op: str, body: dict) -> Request:
    headers = {**_auth("dynamodb"), "x-amz-target": f"DynamoDB_20120810.{op}"}
    return Request("POST", "/", "", headers, json.dumps(body).encode())


def test_service_and_operation_come_from_the_signature_scope_and_the_target() -> None:
    req = Request("POST", "/", "", {**_auth("sqs"), "x-amz-target": "AmazonSQS.SendMessageBatch"}, b"{}")
    m = measure(req, 200, b"{}")
    assert (m.service, m.operation) == ("sqs", "SendMessageBatch")
    form = Request(
        "POST",
        "/",
        "",
        {**_auth("ses"), "content-type": "application/x-www-form-urlencoded"},
        b"Action=SendEmail&Destination.ToAddresses.member.1=a%40x.com&Destination.ToAddresses.member.2=b%40x.com",
    )
    m = measure(form, 200, b"")
    assert (m.service, m.operation, m.emails) == ("ses", "SendEmail", 2)
    invoke = Request("POST", "/2015-03-31/functions/splitter/invocations", "", _auth("lambda"), b"{}")
    assert measure(invoke, 202, b"").operation == "Invoke"


@pytest.mark.parametrize(
    ("method", "path", "query", "op", "price"),
    [
        ("PUT", "/bucket/a/b.csv", "", "PutObject", "put"),
        ("PUT", "/bucket/a/b.csv", "partNumber=2&uploadId=u", "UploadPart", "put"),
        ("POST", "/bucket/a/b.csv", "uploads", "CreateMultipartUpload", "put"),
        ("POST", "/bucket/a/b.csv", "uploadId=u", "CompleteMultipartUpload", "put"),
        ("DELETE", "/bucket/a/b.csv", "uploadId=u", "AbortMultipartUpload", "free"),
        ("GET", "/bucket/a/b.csv", "", "GetObject", "get"),
        ("HEAD", "/bucket/a/b.csv", "", "HeadObject", "get"),
        ("GET", "/bucket", "list-type=2&prefix=a", "ListObjectsV2", "put"),
        ("DELETE", "/bucket/a", "", "DeleteObject", "free"),
    ],
)
def test_s3_operations_and_their_price_class(method: str, path: str, query: str, op: str, price: str) -> None:
    assert s3_operation(method, path, query) == op
    assert s3_price_class(op) == price


def test_item_sizes_follow_dynamodb_rules() -> None:
    assert item_size({"pk": {"S": "abc"}}) == 2 + 3
    assert number_size("123") == 1 + 2
    assert number_size("-1.5") == 1 + 1 + 1
    assert item_size({"m": {"M": {"a": {"N": "1"}}}}) == 1 + 3 + (1 + 2 + 1)
    assert item_size({"b": {"BOOL": True}, "n": {"NULL": True}}) == 2 + 2
    assert [write_units(n) for n in (0, 1, 1024, 1025, 3000)] == [1, 1, 1, 2, 3]


def test_a_successful_write_counts_the_units_the_emulator_reports() -> None:
    item = {"pk": {"S": "RUN#r#S3"}, "sk": {"S": "T#0-000000001"}, "state": {"S": "SUCCEEDED"}}
    m = measure(
        ddb("PutItem", {"TableName": "ledger", "Item": item}),
        200,
        b'{"ConsumedCapacity": {"CapacityUnits": 1.0}}',
        SCHEMAS,
    )
    assert m.write_units == 1.0 and not m.units_computed
    assert m.key_writes == [("ledger", "RUN#r#S3", "RUN#r#S3|T#0-000000001", 1.0)]


def test_a_failed_conditional_put_is_billed_by_the_size_of_the_item() -> None:
    item = {"pk": {"S": "a"}, "sk": {"S": "b"}, "big": {"S": "x" * 1500}}
    body = b'{"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"}'
    m = measure(ddb("PutItem", {"TableName": "ledger", "Item": item}), 400, body, SCHEMAS)
    assert m.error == "ConditionalCheckFailedException"
    assert m.write_units == 2.0 and m.units_computed
    assert m.key_writes[0][2] == "a|b"


def test_a_failed_conditional_update_is_billed_by_the_old_item_when_returned_else_one_unit() -> None:
    key = {"pk": {"S": "RUN#r#C1"}, "sk": {"S": "COUNT"}}
    ccf = {"__type": "x#ConditionalCheckFailedException"}
    plain = measure(ddb("UpdateItem", {"TableName": "ledger", "Key": key}), 400, json.dumps(ccf).encode(), SCHEMAS)
    assert plain.write_units == 1.0
    old = {**key, "blob": {"S": "y" * 2100}}
    returned = measure(
        ddb("UpdateItem", {"TableName": "ledger", "Key": key}), 400, json.dumps({**ccf, "Item": old}).encode(), SCHEMAS
    )
    assert returned.write_units == 3.0


def test_batch_and_transactional_writes_name_every_key() -> None:
    batch = {
        "RequestItems": {
            "ledger": [
                {"PutRequest": {"Item": {"pk": {"S": "p1"}, "sk": {"S": "s1"}}}},
                {"DeleteRequest": {"Key": {"pk": {"S": "p2"}, "sk": {"S": "s2"}}}},
            ]
        }
    }
    m = measure(ddb("BatchWriteItem", batch), 200, b'{"ConsumedCapacity": [{"CapacityUnits": 2.0}]}', SCHEMAS)
    assert [k[2] for k in m.key_writes] == ["p1|s1", "p2|s2"]
    assert m.write_units == 2.0
    transact = {
        "TransactItems": [
            {"Update": {"TableName": "ledger", "Key": {"pk": {"S": "c0"}, "sk": {"S": "COUNT"}}}},
            {"Update": {"TableName": "ledger", "Key": {"pk": {"S": "c1"}, "sk": {"S": "COUNT"}}}},
        ]
    }
    cancelled = measure(
        ddb("TransactWriteItems", transact), 400, b'{"__type": "x#TransactionCanceledException"}', SCHEMAS
    )
    assert cancelled.write_units == 4.0  # transactional writes cost twice
    assert [k[1] for k in cancelled.key_writes] == ["c0", "c1"]


def test_a_batch_of_partiql_inserts_names_every_record_it_writes() -> None:
    # GIVEN the ledger's task records as INSERTs (values as parameters), one of them a duplicate
    from microprocess.ledger.records import insert_statement

    items = [{"pk": f"RUN#r#S{i}", "sk": f"T#0-{i:09d}", "state": "SUCCEEDED", "attempts": 1} for i in range(3)]
    body = {"Statements": [insert_statement("ledger", item) for item in items]}
    response = {
        "Responses": [{"TableName": "ledger"}, {"TableName": "ledger", "Error": {"Code": "DuplicateItem"}}, {}],
        "ConsumedCapacity": [{"TableName": "ledger", "CapacityUnits": 3.0}],
    }
    m = measure(ddb("BatchExecuteStatement", body), 200, json.dumps(response).encode(), SCHEMAS)
    # THEN each record's key is counted (P3), with the units the emulator reports (P2)
    assert m.write_units == 3.0
    assert [k[2] for k in m.key_writes] == [f"RUN#r#S{i}|T#0-{i:09d}" for i in range(3)]
    assert [k[1] for k in m.key_writes] == ["RUN#r#S0", "RUN#r#S1", "RUN#r#S2"]


def test_reads_count_read_units_and_no_writes() -> None:
    m = measure(
        ddb("Query", {"TableName": "ledger"}),
        200,
        b'{"Items": [], "ConsumedCapacity": {"CapacityUnits": 0.5}}',
        SCHEMAS,
    )
    assert (m.read_units, m.write_units, m.key_writes) == (0.5, 0.0, [])


def test_sqs_bills_every_64_kb_chunk() -> None:
    assert sqs_billed_requests(0) == 1
    assert sqs_billed_requests(10 * 500) == 1
    assert sqs_billed_requests(65_536) == 1
    assert sqs_billed_requests(65_537) == 2
    entries = [{"Id": str(i), "MessageBody": "x" * 20_000} for i in range(10)]
    req = Request(
        "POST",
        "/",
        "",
        {**_auth("sqs"), "x-amz-target": "AmazonSQS.SendMessageBatch"},
        json.dumps({"Entries": entries}).encode(),
    )
    assert measure(req, 200, b"{}").billed_requests == 4  # 200,000 bytes -> 4 chunks
    receive = Request("POST", "/", "", {**_auth("sqs"), "x-amz-target": "AmazonSQS.ReceiveMessage"}, b"{}")
    answer = json.dumps({"Messages": [{"Body": "y" * 70_000}]}).encode()
    assert measure(receive, 200, answer).billed_requests == 2


def test_the_proxy_asks_dynamodb_for_consumed_capacity_only_where_it_applies() -> None:
    added = gateway.with_consumed_capacity("PutItem", b'{"TableName": "t"}')
    assert added is not None and json.loads(added)["ReturnConsumedCapacity"] == "TOTAL"
    assert gateway.with_consumed_capacity("PutItem", b'{"ReturnConsumedCapacity": "TOTAL"}') is None
    assert gateway.with_consumed_capacity("DescribeTable", b'{"TableName": "t"}') is None


# ----------------------------------------------------------------------------- prices


def test_the_price_table_is_dated_and_sourced() -> None:
    data = json.loads(PRICE_TABLE_PATH.read_text())
    assert data["as_of"] and data["source"].startswith("AWS")
    assert load_price_table().as_of == data["as_of"]


def test_prices_by_service() -> None:
    usage = Usage(
        sqs_requests=1e6,
        lambda_requests=1e6,
        lambda_gb_seconds=1000,
        dynamodb_write_units=1e6,
        dynamodb_read_units=1e6,
        s3_put_requests=1000,
        s3_get_requests=1000,
        ses_emails=1000,
        logs_gb=1,
    )
    cost = cost_by_service(usage)
    assert cost == pytest.approx(
        {
            "sqs": 0.40,
            "lambda": 0.20 + 1000 * 0.0000133334,  # arm64, the cloud stage's architecture
            "dynamodb": 0.625 + 0.125,
            "s3": 0.005 + 0.0004,
            "ses": 0.10,
            "logs": 0.50,
        }
    )


def test_the_lambda_price_is_the_cloud_stages_architectures() -> None:
    import json

    from microprocess.cli.pricing import PRICE_TABLE_PATH, PriceTable, PriceTableError

    data = json.loads(PRICE_TABLE_PATH.read_text())
    assert PriceTable.from_dict(data).lambda_architecture == "arm64"
    assert PriceTable.from_dict(data).lambda_per_gb_second == pytest.approx(0.0000133334)
    assert PriceTable.from_dict(data, "x86_64").lambda_per_gb_second == pytest.approx(0.0000166667)
    # an old table with one price for every architecture is refused, with the form to use
    data["prices"]["lambda"]["usd_per_gb_second"] = 0.0000166667
    with pytest.raises(PriceTableError, match="price per architecture"):
        PriceTable.from_dict(data)
