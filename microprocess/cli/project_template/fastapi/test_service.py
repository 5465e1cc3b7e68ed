"""The counter service answers signed pushes as the push contract says (signed with the SDK)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from service import create_app

from microprocess.service import sign_request

SECRET = "a-test-secret-of-at-least-32-characters"
PATH = "/tasks/count-words"


def push(client: TestClient, item: dict[str, object], *, secret: str = SECRET) -> tuple[int, dict[str, object]]:
    body = json.dumps({"run_id": "r1", "task_id": str(item["id"]), "kind": "task", "item": item}).encode()
    headers = sign_request(secret, "POST", PATH, body, f"r1:{item['id']}")
    answer = client.post(PATH, content=body, headers={**headers, "Content-Type": "application/json"})
    return answer.status_code, answer.json()


def test_a_signed_push_is_counted() -> None:
    client = TestClient(create_app(lambda: SECRET))
    assert push(client, {"id": "t-1", "text": "one two three"}) == (200, {"id": "t-1", "words": 3})


def test_an_empty_text_fails_for_good_and_a_wrong_signature_is_refused() -> None:
    client = TestClient(create_app(lambda: SECRET))
    assert push(client, {"id": "t-2", "text": "  "})[0] == 422
    assert push(client, {"id": "t-3", "text": "x"}, secret="another-secret-of-at-least-32-characters")[0] == 401
