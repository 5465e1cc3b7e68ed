"""The bench's counting proxy (bench.proxy) against a stand-in upstream on loopback."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bench.proxy import Proxy

AUTH_DDB = "AWS4-HMAC-SHA256 Credential=test/20261101/us-east-1/dynamodb/aws4_request, Signature=x"
AUTH_S3 = "AWS4-HMAC-SHA256 Credential=test/20261101/us-east-1/s3/aws4_request, Signature=x"


class Upstream:
    """Answers DynamoDB-style requests with their ConsumedCapacity (as the emulator does for the bench,
    `MICROPROCESS_DYNAMODB_CONSUMED_CAPACITY=1`), and echoes the body size."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                method = lines[0].split(" ")[0]
                self.seen.append({"method": method, "headers": headers, "body": body})
                if headers.get("x-amz-target", "").endswith("PutItem"):
                    payload = json.dumps({"ConsumedCapacity": {"CapacityUnits": 1.0}}).encode()
                else:
                    payload = json.dumps({"received": len(body)}).encode()
                if method == "HEAD":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
def proxied() -> Iterator[tuple[int, Proxy, Upstream]]:
    loop = asyncio.new_event_loop()
    upstream = Upstream()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def start() -> None:
        up = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        proxy = Proxy(f"http://127.0.0.1:{up.sockets[0].getsockname()[1]}", {"ledger": ("pk", "sk")})
        front = await asyncio.start_server(lambda r, w: proxy.serve_caller("forwarder", r, w), "127.0.0.1", 0)
        box.update(proxy=proxy, port=front.sockets[0].getsockname()[1], servers=[up, front])
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(5)
    yield box["port"], box["proxy"], upstream

    async def shutdown() -> None:
        for server in box["servers"]:
            server.close()
        for task in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            task.cancel()
        loop.stop()

    loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
    thread.join(5)
    loop.close()


def test_requests_are_forwarded_and_counted_on_one_kept_alive_connection(proxied: tuple[int, Proxy, Upstream]) -> None:
    port, proxy, upstream = proxied
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    item = {"pk": {"S": "RUN#r#S1"}, "sk": {"S": "T#1"}}
    for _ in range(3):
        body = json.dumps({"TableName": "ledger", "Item": item})
        conn.request(
            "POST",
            "/",
            body=body,
            headers={"X-Amz-Target": "DynamoDB_20120810.PutItem", "Authorization": AUTH_DDB},
        )
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read()) == {"ConsumedCapacity": {"CapacityUnits": 1.0}}
    # The proxy forwarded each signed request unchanged: the body and the caller's Host (the emulator
    # checks the signature); the emulator itself reports the capacity (MICROPROCESS_DYNAMODB_CONSUMED_CAPACITY)
    assert all(json.loads(s["body"]) == {"TableName": "ledger", "Item": item} for s in upstream.seen)
    assert all(s["headers"]["host"] == f"127.0.0.1:{port}" for s in upstream.seen)
    snap = proxy.tally.snapshot()
    assert snap["requests"] == [{"caller": "forwarder", "service": "dynamodb", "operation": "PutItem", "value": 3}]
    assert snap["write_units"] == [{"caller": "forwarder", "operation": "PutItem", "value": 3.0}]
    assert snap["hottest_items"][0] == {"table": "ledger", "key": "RUN#r#S1|T#1", "writes": 3, "write_units": 3.0}
    assert snap["proxy_errors"] == {}


def test_expect_continue_chunked_uploads_and_head_answers(proxied: tuple[int, Proxy, Upstream]) -> None:
    port, proxy, upstream = proxied
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("PUT", "/bucket/key.csv")
    conn.putheader("Authorization", AUTH_S3)
    conn.putheader("Expect", "100-continue")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    # The proxy answers 100 Continue itself; http.client ignores it and reads the final answer.
    for chunk in (b"a" * 1000, b"b" * 500):
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.send(b"0\r\n\r\n")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read()) == {"received": 1500}
    assert "expect" not in upstream.seen[-1]["headers"]
    conn.request("HEAD", "/bucket/key.csv", headers={"Authorization": AUTH_S3})
    head = conn.getresponse()
    assert head.status == 200 and head.getheader("Content-Length") == "1234" and head.read() == b""
    ops = {(r["service"], r["operation"]) for r in proxy.tally.snapshot()["requests"]}
    assert ops == {("s3", "PutObject"), ("s3", "HeadObject")}
