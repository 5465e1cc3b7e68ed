"""The counter service answers signed pushes as the push contract says (signed with the SDK)."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator

import pytest
from service import PATH, serve

from microprocess.service import sign_request

SECRET = "a-test-secret-of-at-least-32-characters"


@pytest.fixture
def port() -> Iterator[int]:
    server = serve(0, lambda: SECRET)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def push(port: int, item: dict[str, object], *, secret: str = SECRET) -> tuple[int, dict[str, object]]:
    body = json.dumps({"run_id": "r1", "task_id": str(item["id"]), "kind": "task", "item": item}).encode()
    headers = sign_request(secret, "POST", PATH, body, f"r1:{item['id']}")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", PATH, body=body, headers={**headers, "Content-Type": "application/json"})
    answer = conn.getresponse()
    return answer.status, json.loads(answer.read())


def test_a_signed_push_is_counted(port: int) -> None:
    assert push(port, {"id": "t-1", "text": "one two three"}) == (200, {"id": "t-1", "words": 3})


def test_an_empty_text_fails_for_good_and_a_wrong_signature_is_refused(port: int) -> None:
    assert push(port, {"id": "t-2", "text": "  "})[0] == 422
    assert push(port, {"id": "t-3", "text": "x"}, secret="another-secret-of-at-least-32-characters")[0] == 401
